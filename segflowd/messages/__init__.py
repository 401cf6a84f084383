"""Templates, message building, the messages table and delivery providers."""
