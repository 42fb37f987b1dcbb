//! The client SDK: reads, watches, files, plaintext connections.

mod files;
mod plaintext;
mod reads;
mod watch;
