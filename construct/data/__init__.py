"""data phase/piece of construct."""
