"""Call sessions: per-call state, turn-taking, barge-in."""
