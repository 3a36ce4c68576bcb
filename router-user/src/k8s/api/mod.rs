//! The Kubernetes resources Switchyard reads, declared as the Gateway API Inference Extension
//! declares them, so a cluster set up for GIE works unchanged.
pub mod conditions;
pub mod fields;
pub mod inference_objective;
pub mod inference_pool;
pub mod validation;

pub use inference_objective::{
    InferenceObjective, InferenceObjectiveSpec, InferenceObjectiveStatus, OBJECTIVE_GROUP,
    POOL_KIND, PoolObjectReference,
};
pub use inference_pool::{
    AppProtocol, EndpointPickerRef, FailureMode, InferencePool, InferencePoolSpec,
    InferencePoolStatus, LabelSelector, POOL_GROUP, ParentReference, ParentStatus, Port,
};
pub use validation::{
    FieldError, SpecErrors, parse_objective, parse_pool, validate_objective_spec,
    validate_pool_spec,
};
