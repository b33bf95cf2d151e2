"""extract phase/piece of construct."""
