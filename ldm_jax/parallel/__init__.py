"""Device meshes, shardings and multi-host helpers."""
