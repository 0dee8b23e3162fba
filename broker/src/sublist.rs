//! [`Sublist`]: the subscription index, a token trie like nats-server's.
//!
//! The public surface is deliberately small (`insert`, `remove`, `matches`,
//! `len`) so the internals can later gain a result cache or a different
//! layout without touching the server code. The list is generic over the
//! subscription value and stores `Arc<T>`, so it stays pure: it knows nothing
//! about connections or I/O. Entries are identified by pointer
//! (`Arc::ptr_eq`), which lets the same subject be subscribed many times.

use std::collections::HashMap;
use std::sync::Arc;

use crate::subject::{FULL_WILDCARD, PARTIAL_WILDCARD, is_valid_queue_name, is_valid_subject};

/// Why an insertion was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SublistError {
    /// The subject is not a valid subscription subject.
    #[error("invalid subject")]
    InvalidSubject,
    /// The queue group name is empty or contains whitespace.
    #[error("invalid queue group name")]
    InvalidQueue,
}

/// The subscriptions matching one subject.
#[derive(Debug)]
pub struct SublistResult<T> {
    /// Plain subscriptions: each gets a copy of the message.
    pub psubs: Vec<Arc<T>>,
    /// Queue groups, merged by name across matching filters as nats-server
    /// does: one member of each group gets the message.
    pub qsubs: Vec<QueueGroup<T>>,
}

impl<T> SublistResult<T> {
    /// Whether nothing matched.
    pub fn is_empty(&self) -> bool {
        self.psubs.is_empty() && self.qsubs.is_empty()
    }
}

/// The members of one queue group that matched a subject.
#[derive(Debug)]
pub struct QueueGroup<T> {
    /// Queue group name.
    pub name: Box<[u8]>,
    /// Matching members (never empty).
    pub members: Vec<Arc<T>>,
}

#[derive(Debug)]
struct Level<T> {
    literals: HashMap<Box<[u8]>, Node<T>>,
    partial: Option<Box<Node<T>>>,
    full: Option<Box<Node<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            literals: HashMap::new(),
            partial: None,
            full: None,
        }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literals.is_empty() && self.partial.is_none() && self.full.is_none()
    }
}

#[derive(Debug)]
struct Node<T> {
    next: Option<Box<Level<T>>>,
    psubs: Vec<Arc<T>>,
    qsubs: HashMap<Box<[u8]>, Vec<Arc<T>>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            next: None,
            psubs: Vec::new(),
            qsubs: HashMap::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.psubs.is_empty() && self.qsubs.is_empty() && self.next.is_none()
    }
}

/// The subscription index.
#[derive(Debug)]
pub struct Sublist<T> {
    root: Level<T>,
    count: usize,
}

impl<T> Default for Sublist<T> {
    fn default() -> Self {
        Sublist {
            root: Level::default(),
            count: 0,
        }
    }
}

fn split(subject: &[u8]) -> Vec<&[u8]> {
    crate::subject::tokens(subject).collect()
}

impl<T> Sublist<T> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds `sub` under `subject`, in queue group `queue` if given.
    pub fn insert(
        &mut self,
        subject: &[u8],
        queue: Option<&[u8]>,
        sub: Arc<T>,
    ) -> Result<(), SublistError> {
        if !is_valid_subject(subject) {
            return Err(SublistError::InvalidSubject);
        }
        if queue.is_some_and(|q| !is_valid_queue_name(q)) {
            return Err(SublistError::InvalidQueue);
        }
        let toks = split(subject);
        let mut level = &mut self.root;
        let last = toks.len() - 1;
        for (i, tok) in toks.iter().enumerate() {
            let node: &mut Node<T> = if *tok == PARTIAL_WILDCARD {
                level.partial.get_or_insert_with(Box::default)
            } else if *tok == FULL_WILDCARD {
                level.full.get_or_insert_with(Box::default)
            } else {
                level.literals.entry(Box::from(*tok)).or_default()
            };
            if i == last {
                match queue {
                    None => node.psubs.push(sub),
                    Some(q) => node.qsubs.entry(Box::from(q)).or_default().push(sub),
                }
                self.count += 1;
                return Ok(());
            }
            level = node.next.get_or_insert_with(Box::default);
        }
        // Unreachable: a valid subject has at least one token.
        Err(SublistError::InvalidSubject)
    }

    /// Removes the entry `sub` (compared by pointer) inserted under
    /// `subject`/`queue`. Returns whether it was present. Empty branches of
    /// the trie are pruned so churn does not leak memory.
    pub fn remove(&mut self, subject: &[u8], queue: Option<&[u8]>, sub: &Arc<T>) -> bool {
        if !is_valid_subject(subject) {
            return false;
        }
        let toks = split(subject);
        let removed = remove_rec(&mut self.root, &toks, queue, sub);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// All subscriptions whose filter matches the literal `subject`.
    pub fn matches(&self, subject: &[u8]) -> SublistResult<T> {
        let mut result = SublistResult {
            psubs: Vec::new(),
            qsubs: Vec::new(),
        };
        let toks = split(subject);
        // Like nats-server: a subject with an empty token matches nothing.
        if toks.iter().any(|t| t.is_empty()) {
            return result;
        }
        match_level(&self.root, &toks, &mut result);
        result
    }
}

fn remove_rec<T>(level: &mut Level<T>, toks: &[&[u8]], queue: Option<&[u8]>, sub: &Arc<T>) -> bool {
    let Some((tok, rest)) = toks.split_first() else {
        return false;
    };
    let node: &mut Node<T> = if *tok == PARTIAL_WILDCARD {
        match level.partial.as_deref_mut() {
            Some(n) => n,
            None => return false,
        }
    } else if *tok == FULL_WILDCARD {
        match level.full.as_deref_mut() {
            Some(n) => n,
            None => return false,
        }
    } else {
        match level.literals.get_mut(*tok) {
            Some(n) => n,
            None => return false,
        }
    };
    let removed = if rest.is_empty() {
        remove_from_node(node, queue, sub)
    } else {
        match node.next.as_deref_mut() {
            Some(next) => {
                let removed = remove_rec(next, rest, queue, sub);
                if next.is_empty() {
                    node.next = None;
                }
                removed
            }
            None => false,
        }
    };
    if removed && node.is_empty() {
        if *tok == PARTIAL_WILDCARD {
            level.partial = None;
        } else if *tok == FULL_WILDCARD {
            level.full = None;
        } else {
            level.literals.remove(*tok);
        }
    }
    removed
}

fn remove_from_node<T>(node: &mut Node<T>, queue: Option<&[u8]>, sub: &Arc<T>) -> bool {
    match queue {
        None => remove_ptr(&mut node.psubs, sub),
        Some(q) => {
            let Some(members) = node.qsubs.get_mut(q) else {
                return false;
            };
            let removed = remove_ptr(members, sub);
            if members.is_empty() {
                node.qsubs.remove(q);
            }
            removed
        }
    }
}

fn remove_ptr<T>(list: &mut Vec<Arc<T>>, sub: &Arc<T>) -> bool {
    match list.iter().position(|s| Arc::ptr_eq(s, sub)) {
        Some(i) => {
            list.swap_remove(i);
            true
        }
        None => false,
    }
}

fn match_level<T>(level: &Level<T>, toks: &[&[u8]], result: &mut SublistResult<T>) {
    let Some((tok, rest)) = toks.split_first() else {
        return;
    };
    // `>` at this level matches because at least `tok` remains.
    if let Some(full) = level.full.as_deref() {
        add_node(full, result);
    }
    if let Some(partial) = level.partial.as_deref() {
        descend(partial, rest, result);
    }
    if let Some(node) = level.literals.get(*tok) {
        descend(node, rest, result);
    }
}

fn descend<T>(node: &Node<T>, rest: &[&[u8]], result: &mut SublistResult<T>) {
    if rest.is_empty() {
        add_node(node, result);
    } else if let Some(next) = node.next.as_deref() {
        match_level(next, rest, result);
    }
}

fn add_node<T>(node: &Node<T>, result: &mut SublistResult<T>) {
    result.psubs.extend(node.psubs.iter().cloned());
    for (name, members) in &node.qsubs {
        match result.qsubs.iter_mut().find(|g| g.name == *name) {
            Some(group) => group.members.extend(members.iter().cloned()),
            None => result.qsubs.push(QueueGroup {
                name: name.clone(),
                members: members.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subject::subject_matches;

    fn ids(r: &SublistResult<u32>) -> Vec<u32> {
        let mut v: Vec<u32> = r.psubs.iter().map(|s| **s).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn literal_and_wildcards() {
        let mut sl = Sublist::new();
        let subs: Vec<(&str, Arc<u32>)> = vec![
            ("foo.bar", Arc::new(1)),
            ("foo.*", Arc::new(2)),
            ("foo.>", Arc::new(3)),
            (">", Arc::new(4)),
            ("*.bar", Arc::new(5)),
            ("foo", Arc::new(6)),
            ("foo>", Arc::new(7)),
        ];
        for (s, v) in &subs {
            sl.insert(s.as_bytes(), None, v.clone()).unwrap();
        }
        assert_eq!(sl.len(), 7);
        assert_eq!(ids(&sl.matches(b"foo.bar")), vec![1, 2, 3, 4, 5]);
        assert_eq!(ids(&sl.matches(b"foo.baz")), vec![2, 3, 4]);
        assert_eq!(ids(&sl.matches(b"foo.bar.baz")), vec![3, 4]);
        assert_eq!(ids(&sl.matches(b"foo")), vec![4, 6]);
        assert_eq!(ids(&sl.matches(b"foo>")), vec![4, 7]);
        assert_eq!(ids(&sl.matches(b"x.bar")), vec![4, 5]);

        assert!(sl.remove(b"foo.*", None, &subs[1].1));
        assert!(!sl.remove(b"foo.*", None, &subs[1].1));
        assert_eq!(ids(&sl.matches(b"foo.baz")), vec![3, 4]);
        for (s, v) in &subs {
            sl.remove(s.as_bytes(), None, v);
        }
        assert!(sl.is_empty());
        assert!(sl.root.is_empty(), "trie must be pruned");
    }

    #[test]
    fn same_subject_many_entries() {
        let mut sl = Sublist::new();
        let a = Arc::new(1);
        let b = Arc::new(1);
        sl.insert(b"x", None, a.clone()).unwrap();
        sl.insert(b"x", None, b.clone()).unwrap();
        assert_eq!(sl.matches(b"x").psubs.len(), 2);
        assert!(sl.remove(b"x", None, &a));
        let r = sl.matches(b"x");
        assert_eq!(r.psubs.len(), 1);
        assert!(Arc::ptr_eq(&r.psubs[0], &b));
    }

    #[test]
    fn queue_groups_merge_by_name() {
        let mut sl = Sublist::new();
        let a = Arc::new(1);
        let b = Arc::new(2);
        let c = Arc::new(3);
        sl.insert(b"foo.*", Some(b"q"), a.clone()).unwrap();
        sl.insert(b"foo.>", Some(b"q"), b.clone()).unwrap();
        sl.insert(b"foo.bar", Some(b"other"), c.clone()).unwrap();
        let r = sl.matches(b"foo.bar");
        assert!(r.psubs.is_empty());
        assert_eq!(r.qsubs.len(), 2);
        let q = r.qsubs.iter().find(|g| &*g.name == b"q").unwrap();
        assert_eq!(q.members.len(), 2);
        assert!(sl.remove(b"foo.*", Some(b"q"), &a));
        assert!(!sl.remove(b"foo.>", None, &b), "queue must match");
        assert!(sl.remove(b"foo.>", Some(b"q"), &b));
        assert!(sl.remove(b"foo.bar", Some(b"other"), &c));
        assert!(sl.is_empty());
        assert!(sl.root.is_empty());
    }

    #[test]
    fn refuses_invalid() {
        let mut sl = Sublist::new();
        assert_eq!(
            sl.insert(b"foo..bar", None, Arc::new(0)),
            Err(SublistError::InvalidSubject)
        );
        assert_eq!(
            sl.insert(b"foo.>.bar", None, Arc::new(0)),
            Err(SublistError::InvalidSubject)
        );
        assert_eq!(
            sl.insert(b"foo", Some(b""), Arc::new(0)),
            Err(SublistError::InvalidQueue)
        );
        assert!(sl.is_empty());
        assert!(sl.matches(b"").is_empty());
        assert!(sl.matches(b"..").is_empty());
    }

    /// The trie agrees with the reference matcher on a grid of filters and
    /// subjects built token by token.
    #[test]
    fn agrees_with_reference_matcher() {
        let alphabet = ["a", "b", "*", ">"];
        let mut filters = Vec::new();
        for x in alphabet {
            filters.push(x.to_string());
            for y in alphabet {
                filters.push(format!("{x}.{y}"));
                for z in alphabet {
                    filters.push(format!("{x}.{y}.{z}"));
                }
            }
        }
        filters.retain(|f| is_valid_subject(f.as_bytes()));
        let mut sl = Sublist::new();
        let entries: Vec<(String, Arc<u32>)> = filters
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), Arc::new(i as u32)))
            .collect();
        for (f, v) in &entries {
            sl.insert(f.as_bytes(), None, v.clone()).unwrap();
        }
        let literals = ["a", "b", "c", "a.b", "b.a", "a.a.a", "a.b.c", "c.c.c.c"];
        for subject in literals {
            let mut want: Vec<u32> = entries
                .iter()
                .filter(|(f, _)| subject_matches(f.as_bytes(), subject.as_bytes()))
                .map(|(_, v)| **v)
                .collect();
            want.sort_unstable();
            assert_eq!(ids(&sl.matches(subject.as_bytes())), want, "{subject}");
        }
    }
}
