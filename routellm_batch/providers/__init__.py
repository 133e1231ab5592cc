"""Provider batch APIs behind one BatchProvider interface."""
