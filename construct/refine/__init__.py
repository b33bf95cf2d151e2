"""refine phase/piece of construct."""
