//! What calls came to: the ledger of costs, outcomes and feedback, the
//! reports and dashboard built from it, the learned routing model that
//! outcomes train, and replay, which measures that model on recorded data.

pub mod dashboard;
pub mod report;
pub mod whatif;
