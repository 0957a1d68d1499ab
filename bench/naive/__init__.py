"""The Channels tutorial pattern, speaking Dorm's frames: the fan-out baseline."""
