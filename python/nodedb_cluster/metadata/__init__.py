"""The metadata group (group 0): its commands, its state machine and the placement rules."""
