"""The procedural world: terrain, the software renderer, the engine that steps them with actions,
themes parsed from prompts, the soundscape, and the scripted player that drives the engine for data."""
