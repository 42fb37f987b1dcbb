//! Rotation: acknowledgements, the rotation spec, `cofferctl rotate`.

mod acks;
mod acks_bounded;
mod cli;
mod spec;
