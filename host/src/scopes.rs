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

/// One of the scopes an event is filtered on, as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => SCOPE_READ,
            Scope::Write => SCOPE_WRITE,
            Scope::Admin => SCOPE_ADMIN,
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The scopes a grant satisfies, implied ones included (one bit each),
/// worked out once per connection: the broadcaster asks it for every
/// event and every connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Granted(u8);

impl Granted {
    pub fn of(granted: &[String]) -> Self {
        Granted(
            Scope::ALL
                .iter()
                .filter(|s| scope_satisfies(granted, s.name()))
                .fold(0, |bits, s| bits | s.bit()),
        )
    }

    pub fn allows(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }
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

    #[test]
    fn granted_agrees_with_scope_satisfies() {
        let grants: [&[&str]; 6] = [
            &[],
            &[SCOPE_READ],
            &[SCOPE_WRITE],
            &[SCOPE_ADMIN],
            &[SCOPE_READ, SCOPE_WRITE],
            &["operator.other"],
        ];
        for g in grants {
            let g: Vec<String> = g.iter().map(|s| s.to_string()).collect();
            for s in Scope::ALL {
                assert_eq!(
                    Granted::of(&g).allows(s),
                    scope_satisfies(&g, s.name()),
                    "{g:?} {s:?}"
                );
            }
        }
        assert!(!Granted::of(&[SCOPE_WRITE.to_string()]).allows(Scope::Admin));
    }
}
