//! Bounded admission: at most `limit` texts in flight across all models. Over the limit a request
//! is refused at once (RESOURCE_EXHAUSTED), never queued without bound.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};
use crate::metrics as m;

#[derive(Clone)]
pub struct Admission {
    sem: Arc<Semaphore>,
    limit: usize,
}

/// Held while a request is in flight; releases its texts' slots on drop.
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    texts: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        metrics::gauge!(m::IN_FLIGHT).decrement(self.texts as f64);
    }
}

impl Admission {
    pub fn new(limit: usize) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn in_flight(&self) -> usize {
        self.limit - self.sem.available_permits()
    }

    /// Takes `texts` slots or fails immediately.
    pub fn try_admit(&self, texts: usize) -> Result<Permit> {
        let n = u32::try_from(texts).unwrap_or(u32::MAX);
        match self.sem.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                metrics::gauge!(m::IN_FLIGHT).increment(texts as f64);
                Ok(Permit { _permit: p, texts })
            }
            Err(_) => Err(Error::Overloaded {
                in_flight: self.in_flight(),
                limit: self.limit,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_over_limit_and_releases() {
        let a = Admission::new(3);
        let p = a.try_admit(2).unwrap();
        assert!(matches!(a.try_admit(2), Err(Error::Overloaded { .. })));
        drop(p);
        assert!(a.try_admit(3).is_ok());
    }
}
