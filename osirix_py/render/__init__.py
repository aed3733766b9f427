"""VTK rendering (no Qt)."""
