//! labelwise decides which labels to buy: it trains a ResNet18 encoder with a CosFace head on
//! the labelled images, scores an unlabelled pool by uncertainty, buys the best batch within a
//! budget, retrains, and measures the gain over random purchases.

pub mod backend;
pub mod error;
pub mod ptx;
pub mod tensor;

pub use backend::{Backend, BackendHandle, DeviceChoice};
pub use error::{Error, Result};
pub use tensor::Tensor;
