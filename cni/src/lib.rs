//! hull's CNI plugin and invoker.
//!
//! Module map (grows as the plugin is built):
