//! labelwise decides which labels to buy: it trains a ResNet18 encoder with a CosFace head on
//! the labelled images, scores an unlabelled pool by uncertainty, buys the best batch within a
//! budget, retrains, and measures the gain over random purchases.

pub mod active;
pub mod autograd;
pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod experiment;
pub mod io;
pub mod model;
pub mod optim;
#[cfg(feature = "cli")]
pub mod plot;
pub mod ptx;
pub mod tensor;
pub mod tensor_file;
pub mod train;

pub use backend::{Backend, BackendHandle, DeviceChoice};
pub use error::{Error, Result};
pub use tensor::Tensor;

/// The README's Rust examples, compiled by `cargo test`.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
