//! Frame codec and control messages: see WIRE.md.
