"""Engine adapters: one package per engine family, each declaring its engines in a light __init__."""
