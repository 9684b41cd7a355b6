//! hull's node side: the CRI v1 server and the node agent.
//!
//! Module map (grows as the agent is built):
