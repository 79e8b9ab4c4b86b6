//! Pure domain logic (no I/O): each feature's rules live in one module.

pub mod account;
pub mod audience;
pub mod audience_fee;
pub mod audience_names;
pub mod conversion;
pub mod export_controls;
pub mod segment;
