
pub mod openapi;
pub mod conversions;
pub mod demo;
pub mod sandbox;
pub mod stack;
