"""Integration tests against the real ultralytics and torchvision (a package, so its conftest has its own name)."""
