//! The server: [`Server`], a whole server assembled from its settings
//! ([`builder`]), in the library so that the binary is a thin command line
//! and a program (or a test) can embed one.

pub mod builder;

pub use builder::{Server, ServerBuilder, StartError};
