"""Pure preferences logic: validation, consent state, contact plans."""
