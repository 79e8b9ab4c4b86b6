pub mod conversions;
pub mod demo;
pub mod export_rig;
pub mod openapi;
pub mod privacy;
pub mod sandbox;
pub mod stack;
pub mod tables;
