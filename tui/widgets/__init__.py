"""Dashboard widgets: each draws itself from attributes its screen sets."""
