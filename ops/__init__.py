"""Operations tooling that runs outside the application (compose stack, stand-in images)."""
