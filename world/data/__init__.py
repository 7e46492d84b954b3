"""Recorded worlds: episode datasets (`datagen`), session recordings (`recorder`), their export to mp4
and their replay (making a recording again and checking every frame)."""
