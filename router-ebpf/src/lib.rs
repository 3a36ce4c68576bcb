#![no_std]
// Exists so the crate has a library target, as aya-template does.
