//! Microservice port allocation: pure, so the rules are tested without a
//! database. The caller feeds it the ports live deployments hold.

/// A port held by a live (queued or running) deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPort {
    pub sandbox: String,
    pub repository: String,
    pub port: u16,
    pub deployment: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortError {
    Zero,
    /// Another sandbox or service holds the requested port.
    Taken(HeldPort),
    Exhausted {
        first: u16,
        last: u16,
    },
}

impl std::fmt::Display for PortError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortError::Zero => f.write_str("invalid port 0: choose a port from 1 to 65535"),
            PortError::Taken(h) => write!(
                f,
                "port {} is in use by service {:?} of sandbox {:?} (deployment {})",
                h.port, h.repository, h.sandbox, h.deployment
            ),
            PortError::Exhausted { first, last } => write!(
                f,
                "every microservice port from {first} to {last} is in use: stop a deployment first"
            ),
        }
    }
}

/// The port for `sandbox`/`repository`: the requested one unless another
/// service holds it; otherwise the port this service already holds (a
/// redeploy keeps its address), otherwise the lowest free one in `range`.
pub fn choose(
    range: (u16, u16),
    held: &[HeldPort],
    sandbox: &str,
    repository: &str,
    requested: Option<u16>,
) -> Result<u16, PortError> {
    let same = |h: &&HeldPort| h.sandbox == sandbox && h.repository == repository;
    if let Some(port) = requested {
        if port == 0 {
            return Err(PortError::Zero);
        }
        return match held.iter().find(|h| h.port == port && !same(h)) {
            Some(h) => Err(PortError::Taken(h.clone())),
            None => Ok(port),
        };
    }
    if let Some(own) = held.iter().filter(same).map(|h| h.port).min() {
        return Ok(own);
    }
    let (first, last) = range;
    (first..=last)
        .find(|p| !held.iter().any(|h| h.port == *p))
        .ok_or(PortError::Exhausted { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(sandbox: &str, repository: &str, port: u16) -> HeldPort {
        HeldPort {
            sandbox: sandbox.into(),
            repository: repository.into(),
            port,
            deployment: format!("d-{port}"),
        }
    }

    #[test]
    fn lowest_free_port_in_range_is_allocated() {
        assert_eq!(choose((9001, 9999), &[], "qa", "eredar", None), Ok(9001));
        let taken = [held("a", "x", 9001), held("b", "y", 9003)];
        assert_eq!(choose((9001, 9999), &taken, "qa", "eredar", None), Ok(9002));
    }

    #[test]
    fn a_redeploy_keeps_its_port() {
        let taken = [held("a", "x", 9001), held("qa", "eredar", 9005)];
        assert_eq!(choose((9001, 9999), &taken, "qa", "eredar", None), Ok(9005));
        assert_eq!(
            choose((9001, 9999), &taken, "qa", "eredar", Some(9005)),
            Ok(9005)
        );
    }

    #[test]
    fn a_requested_port_held_by_another_service_conflicts() {
        let taken = [held("a", "x", 9001)];
        let err = choose((9001, 9999), &taken, "qa", "eredar", Some(9001)).unwrap_err();
        assert_eq!(err, PortError::Taken(taken[0].clone()));
        assert!(err.to_string().contains("port 9001 is in use"), "{err}");
        // Same sandbox, other service: still a conflict.
        let err = choose((9001, 9999), &taken, "a", "eredar", Some(9001));
        assert!(matches!(err, Err(PortError::Taken(_))));
        assert_eq!(
            choose((9001, 9999), &taken, "qa", "eredar", Some(9100)),
            Ok(9100)
        );
    }

    #[test]
    fn port_zero_and_exhaustion_are_errors() {
        assert_eq!(
            choose((9001, 9999), &[], "qa", "e", Some(0)),
            Err(PortError::Zero)
        );
        let taken = [held("a", "x", 9001), held("b", "y", 9002)];
        assert_eq!(
            choose((9001, 9002), &taken, "qa", "e", None),
            Err(PortError::Exhausted {
                first: 9001,
                last: 9002
            })
        );
    }
}
