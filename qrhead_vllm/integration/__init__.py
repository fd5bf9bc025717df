"""Engine integrations. Each engine gets one folder; the core knows nothing of them."""
