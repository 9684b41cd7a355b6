//! hull's control plane.
//!
//! Module map (grows as the control plane is built):
