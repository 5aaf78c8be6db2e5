//! Task models: a preprocessor, the shared encoder, a decoder and a postprocessor.

pub mod masked_lm;
