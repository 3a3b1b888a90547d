"""The agent: profile, LLM turn loop with tools, spoken-text chunking."""
