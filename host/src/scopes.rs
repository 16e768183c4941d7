//! Operator scopes and their implication, a leaf: what `config` validates,
//! `gateway::auth` grants, and `connections`, `broadcast` and `channels`
//! filter on. It imports nothing of the crate.

pub const SCOPE_READ: &str = "operator.read";
pub const SCOPE_WRITE: &str = "operator.write";
pub const SCOPE_ADMIN: &str = "operator.admin";
pub const KNOWN_SCOPES: &[&str] = &[SCOPE_READ, SCOPE_WRITE, SCOPE_ADMIN];

/// Does holding `granted` satisfy `required`? admin implies all, write implies read.
pub fn scope_satisfies(granted: &[String], required: &str) -> bool {
    granted
        .iter()
        .any(|g| g == required || g == SCOPE_ADMIN || (g == SCOPE_WRITE && required == SCOPE_READ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implication() {
        let admin = vec![SCOPE_ADMIN.to_string()];
        let write = vec![SCOPE_WRITE.to_string()];
        assert!(scope_satisfies(&admin, SCOPE_WRITE));
        assert!(scope_satisfies(&write, SCOPE_READ));
        assert!(!scope_satisfies(&write, SCOPE_ADMIN));
    }
}
