"""train phase/piece of construct."""
