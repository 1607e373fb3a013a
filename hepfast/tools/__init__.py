"""Operator tools around the switch: capture files, the replay generator, synthetic traffic,
the sink and the demo."""
