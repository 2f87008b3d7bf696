//! Finding circles among sibling modules: strongly connected sets (Tarjan) and, for the
//! message, the shortest circle through each.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// "Module `parent::from` uses module `parent::to`", lifted to siblings, with where it shows.
#[derive(Debug, Clone)]
pub(super) struct Edge {
    /// The deepest common ancestor of the two ends (empty for the crate root).
    pub(super) parent: Vec<String>,
    pub(super) from: String,
    pub(super) to: String,
    /// Where the use is, e.g. `engine-core/src/stage.rs:10 uses crate::context::StageContext`.
    pub(super) evidence: String,
}

/// One message per strongly connected set of two or more siblings.
pub(super) fn circles(edges: &[Edge]) -> Vec<String> {
    let mut groups: BTreeMap<&[String], Vec<&Edge>> = BTreeMap::new();
    for edge in edges {
        groups.entry(&edge.parent).or_default().push(edge);
    }
    let mut messages = Vec::new();
    for (parent, edges) in groups {
        let mut next: BTreeMap<&str, BTreeMap<&str, &Edge>> = BTreeMap::new();
        for edge in &edges {
            next.entry(&edge.from)
                .or_default()
                .entry(&edge.to)
                .or_insert(edge);
            next.entry(&edge.to).or_default();
        }
        for set in strongly_connected(&next) {
            if set.len() < 2 {
                continue;
            }
            let prefix = if parent.is_empty() {
                "crate".to_owned()
            } else {
                format!("crate::{}", parent.join("::"))
            };
            let cycle = shortest_cycle(&next, &set);
            let mut shown: Vec<&str> = cycle.clone();
            shown.push(cycle[0]);
            let uses: Vec<String> = cycle
                .iter()
                .zip(cycle.iter().cycle().skip(1))
                .map(|(a, b)| next[a][b].evidence.clone())
                .collect();
            let others: Vec<&str> = set.iter().copied().filter(|m| !cycle.contains(m)).collect();
            let mut message = format!(
                "modules of {prefix} in a circle: {} ({})",
                shown.join(" -> "),
                uses.join("; ")
            );
            if !others.is_empty() {
                message.push_str(&format!("; also in the circle: {}", others.join(", ")));
            }
            messages.push(message);
        }
    }
    messages
}

type Graph<'a> = BTreeMap<&'a str, BTreeMap<&'a str, &'a Edge>>;

/// Tarjan's strongly connected components, each sorted.
fn strongly_connected<'a>(graph: &Graph<'a>) -> Vec<BTreeSet<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<BTreeSet<&'a str>>,
    }
    fn visit<'a>(node: &'a str, graph: &Graph<'a>, st: &mut State<'a>) {
        let n = st.index.len();
        st.index.insert(node, n);
        st.low.insert(node, n);
        st.stack.push(node);
        st.on_stack.insert(node);
        for &to in graph[node].keys() {
            if !st.index.contains_key(to) {
                visit(to, graph, st);
                let low = st.low[node].min(st.low[to]);
                st.low.insert(node, low);
            } else if st.on_stack.contains(to) {
                let low = st.low[node].min(st.index[to]);
                st.low.insert(node, low);
            }
        }
        if st.low[node] == st.index[node] {
            let mut set = BTreeSet::new();
            while let Some(top) = st.stack.pop() {
                st.on_stack.remove(top);
                set.insert(top);
                if top == node {
                    break;
                }
            }
            st.found.push(set);
        }
    }
    let mut st = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for &node in graph.keys() {
        if !st.index.contains_key(node) {
            visit(node, graph, &mut st);
        }
    }
    st.found
}

/// The shortest circle through the first module of `set` (breadth-first, inside the set).
fn shortest_cycle<'a>(graph: &Graph<'a>, set: &BTreeSet<&'a str>) -> Vec<&'a str> {
    let start = *set
        .iter()
        .next()
        .expect("a strongly connected set is not empty");
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &to in graph[node].keys() {
            if !set.contains(to) {
                continue;
            }
            if to == start {
                let mut path = vec![node];
                while let Some(&prev) = came_from.get(path[path.len() - 1]) {
                    path.push(prev);
                }
                path.reverse();
                return path;
            }
            if to != start && !came_from.contains_key(to) {
                came_from.insert(to, node);
                queue.push_back(to);
            }
        }
    }
    vec![start]
}
