"""One module per screen: setup, live, history, compare, and the small modal dialogs."""
