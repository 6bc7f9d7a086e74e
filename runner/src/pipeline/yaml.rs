//! YAML text → [`Node`] tree, read the way GitLab reads `.gitlab-ci.yml` (Ruby's Psych, YAML
//! 1.1 scalars): anchors and aliases, merge keys `<<` (one mapping or a list of them), and the
//! `!reference` tag kept as a [`Value::Reference`] for [`super::reference`] to resolve once
//! includes and `extends:` are merged.
//!
//! The tree is built here from saphyr-parser's event stream instead of taken from a YAML
//! library's loader because none does all of: keep custom tags on sequences, apply merge keys
//! (a YAML 1.1 feature that 1.2 loaders drop), keep a position on every node for error messages,
//! and bound what hostile input can cost (nesting depth, alias expansion: the "billion laughs").

use std::{collections::HashMap, sync::Arc};

use indexmap::IndexMap;
use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, Tag};

use super::error::{Location, PipelineError};

/// Deepest nesting of lists and mappings a file may have. Real CI files stay under 15 levels;
/// the bound keeps every later pass's recursion shallow.
pub(crate) const MAX_DEPTH: usize = 100;

/// Most nodes that anchors and aliases may copy in a whole pipeline, all included files together
/// (an anchor keeps a copy of its tree, each alias copies it again).
pub(crate) const MAX_ALIAS_NODES: usize = 500_000;

/// Most bytes of text (scalars and mapping keys) that anchors and aliases may copy in a whole
/// pipeline, counted like [`MAX_ALIAS_NODES`]. Counting nodes alone lets a few nodes carry
/// megabytes each: one 2 MiB scalar aliased a thousand times is 2 GiB. 64 MiB is sixteen copies
/// of the largest file a pipeline may include (`MAX_FILE_BYTES`), far more than real CI files
/// copy (a few KiB of anchored `script:` or `variables:`).
pub(crate) const MAX_ALIAS_BYTES: usize = 64 << 20;

/// What may still be copied: by anchors and aliases (one budget for all files of a pipeline),
/// by `extends:`, by `!reference`. Each bounds nodes and bytes of text, since either can be
/// what exhausts memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CopyBudget {
    nodes: usize,
    bytes: usize,
    /// The starting amounts, for errors.
    max_nodes: usize,
    max_bytes: usize,
}

/// Which bound of a [`CopyBudget`] a copy would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overrun {
    Nodes,
    Bytes,
}

impl CopyBudget {
    pub(crate) fn new(max_nodes: usize, max_bytes: usize) -> Self {
        Self {
            nodes: max_nodes,
            bytes: max_bytes,
            max_nodes,
            max_bytes,
        }
    }

    /// The budget of one pipeline: [`MAX_ALIAS_NODES`] and [`MAX_ALIAS_BYTES`].
    pub(crate) fn pipeline() -> Self {
        Self::new(MAX_ALIAS_NODES, MAX_ALIAS_BYTES)
    }

    /// Takes a copy of `node` out of the budget and returns the tree's height; on an overrun
    /// the budget is left as it was.
    pub(crate) fn charge(&mut self, node: &Node) -> Result<usize, Overrun> {
        let size = node.size_within(self.nodes, self.bytes)?;
        self.nodes -= size.nodes;
        self.bytes -= size.bytes;
        Ok(size.height)
    }

    /// Takes `nodes` nodes and `bytes` bytes out of the budget.
    pub(crate) fn take(&mut self, nodes: usize, bytes: usize) -> Result<(), Overrun> {
        if nodes > self.nodes {
            return Err(Overrun::Nodes);
        }
        if bytes > self.bytes {
            return Err(Overrun::Bytes);
        }
        self.nodes -= nodes;
        self.bytes -= bytes;
        Ok(())
    }

    /// The bound an overrun crossed, for an error: `500000 values`, `64 MiB of text`.
    pub(crate) fn limit(&self, overrun: Overrun) -> String {
        match overrun {
            Overrun::Nodes => format!("{} values", self.max_nodes),
            Overrun::Bytes => format!("{} of text", show_bytes(self.max_bytes)),
        }
    }

    /// Why an anchor or alias copy was refused: which bound, and what to change.
    fn exceeded(&self, overrun: Overrun) -> String {
        let advice = match overrun {
            Overrun::Nodes => "alias fewer or smaller anchored values",
            Overrun::Bytes => "alias big anchored values fewer times, or make them smaller",
        };
        format!(
            "anchors and aliases copy more than {} in this pipeline (all its files together); \
             is this a YAML bomb? If not, {advice}",
            self.limit(overrun)
        )
    }
}

/// `64 MiB` for whole mebibytes, else the bytes.
fn show_bytes(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// A tree's size: nodes, bytes of text (scalars and keys), height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size {
    nodes: usize,
    bytes: usize,
    height: usize,
}

const CORE_TAG: &str = "tag:yaml.org,2002:";

/// One YAML value and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) at: Location,
}

/// A YAML value after scalar resolution (YAML 1.1, as Psych does it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Map),
    /// `!reference [job, key, ...]`: the items of the tagged list, unresolved.
    Reference(Vec<Node>),
}

/// A mapping in file order; a repeated key keeps its first place and takes the last value, as
/// Ruby hashes do.
pub(crate) type Map = IndexMap<String, Node>;

impl Node {
    pub(crate) fn new(value: Value, at: Location) -> Self {
        Self { value, at }
    }

    /// The value's kind as a user reads it in an error ("a list", "a number", ...).
    pub(crate) fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "empty (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "a number",
            Value::Float(_) => "a decimal number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Reference(_) => "an unresolved !reference",
        }
    }

    pub(crate) fn as_map(&self) -> Option<&Map> {
        match &self.value {
            Value::Map(map) => Some(map),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// Bytes of text this node holds itself: a string's, or a mapping's keys.
    pub(crate) fn text_len(&self) -> usize {
        match &self.value {
            Value::Str(s) => s.len(),
            Value::Map(map) => map.keys().map(String::len).sum(),
            _ => 0,
        }
    }

    /// Measures this tree, giving up once more than `max_nodes` nodes or `max_bytes` bytes of
    /// text are counted, so measuring a huge tree stays cheap.
    fn size_within(&self, max_nodes: usize, max_bytes: usize) -> Result<Size, Overrun> {
        let mut size = Size {
            nodes: 0,
            bytes: 0,
            height: 0,
        };
        size.height = self.size_into(max_nodes, max_bytes, &mut size)?;
        Ok(size)
    }

    fn size_into(
        &self,
        max_nodes: usize,
        max_bytes: usize,
        size: &mut Size,
    ) -> Result<usize, Overrun> {
        size.nodes += 1;
        if size.nodes > max_nodes {
            return Err(Overrun::Nodes);
        }
        size.bytes = size.bytes.saturating_add(self.text_len());
        if size.bytes > max_bytes {
            return Err(Overrun::Bytes);
        }
        let children: Box<dyn Iterator<Item = &Node>> = match &self.value {
            Value::Seq(items) | Value::Reference(items) => Box::new(items.iter()),
            Value::Map(map) => Box::new(map.values()),
            _ => return Ok(1),
        };
        let mut height = 0;
        for child in children {
            height = height.max(child.size_into(max_nodes, max_bytes, size)?);
        }
        Ok(height + 1)
    }
}

/// GitLab's deep merge (used by `include:` and `extends:`): mappings merge key by key at any
/// depth; for anything else the value of `from` replaces the one in `into`. Lists are replaced,
/// never concatenated.
pub(crate) fn deep_merge(into: &mut Map, from: Map) {
    for (key, node) in from {
        match into.get_mut(&key) {
            Some(slot) => {
                let both_maps =
                    matches!((&slot.value, &node.value), (Value::Map(_), Value::Map(_)));
                if both_maps {
                    if let (Value::Map(a), Value::Map(b)) = (&mut slot.value, node.value) {
                        deep_merge(a, b);
                    }
                } else {
                    *slot = node;
                }
            }
            None => {
                into.insert(key, node);
            }
        }
    }
}

/// Loads the CI configuration of one file: its single document, or the second one when the
/// first is a `spec:` header. Empty text gives a null node.
#[cfg(test)]
pub(crate) fn load_config(text: &str, file: &Arc<str>) -> Result<Node, PipelineError> {
    load_config_with(text, file, &mut CopyBudget::pipeline())
}

/// [`load_config`] drawing anchor and alias copies from `copy_budget`, which a pipeline shares
/// across all its files (see [`MAX_ALIAS_NODES`], [`MAX_ALIAS_BYTES`]).
pub(crate) fn load_config_with(
    text: &str,
    file: &Arc<str>,
    copy_budget: &mut CopyBudget,
) -> Result<Node, PipelineError> {
    let mut docs = load(text, file, copy_budget)?;
    match docs.len() {
        0 => Ok(Node::new(Value::Null, Location::file_start(file))),
        1 => Ok(docs.remove(0)),
        2 => {
            let header = &docs[0];
            let is_spec = header
                .as_map()
                .is_some_and(|m| m.len() == 1 && m.contains_key("spec"));
            if !is_spec {
                return Err(PipelineError::config(
                    &docs[1].at,
                    None,
                    None,
                    "a CI file may have a second YAML document only after a `spec:` header",
                ));
            }
            let has_inputs = header
                .as_map()
                .and_then(|m| m.get("spec"))
                .and_then(Node::as_map)
                .is_some_and(|spec| spec.contains_key("inputs"));
            if has_inputs {
                return Err(PipelineError::config(
                    &header.at,
                    None,
                    Some("spec"),
                    "`spec:inputs` is not supported by keyhole-runner exec; \
                     run the job from a file without inputs",
                ));
            }
            Ok(docs.remove(1))
        }
        _ => Err(PipelineError::config(
            &docs[2].at,
            None,
            None,
            "a CI file holds one YAML document (optionally after a `spec:` header), not more",
        )),
    }
}

/// Parses every document of `text`.
fn load(
    text: &str,
    file: &Arc<str>,
    copy_budget: &mut CopyBudget,
) -> Result<Vec<Node>, PipelineError> {
    let mut loader = Loader {
        file,
        docs: Vec::new(),
        root: None,
        stack: Vec::new(),
        anchors: HashMap::new(),
        alias_budget: *copy_budget,
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| syntax_error(file, &e))?;
        loader.on_event(event, span)?;
    }
    *copy_budget = loader.alias_budget;
    Ok(loader.docs)
}

fn syntax_error(file: &Arc<str>, e: &ScanError) -> PipelineError {
    PipelineError::Syntax {
        at: Location {
            file: Arc::clone(file),
            line: e.marker().line(),
            column: e.marker().col() + 1,
        },
        problem: e.info().to_owned(),
    }
}

struct Loader<'f> {
    file: &'f Arc<str>,
    docs: Vec<Node>,
    /// The finished top node of the current document.
    root: Option<Node>,
    stack: Vec<Frame>,
    /// Anchor id (from the parser) → the anchored node, for aliases.
    anchors: HashMap<usize, Node>,
    alias_budget: CopyBudget,
}

enum Frame {
    Seq {
        items: Vec<Node>,
        at: Location,
        anchor: usize,
        reference: bool,
    },
    Map {
        map: Map,
        key: Option<Key>,
        at: Location,
        anchor: usize,
    },
}

/// A mapping key waiting for its value.
struct Key {
    text: String,
    /// `<<`: merge the value's mapping(s) in, as Psych does.
    merge: bool,
    at: Location,
}

/// How a finished node can serve as a mapping key.
enum KeyForm {
    /// A scalar: its text as written; `merge` for an untagged `<<`.
    Scalar { text: String, merge: bool },
    /// A list or mapping: not usable as a key in a CI file.
    Collection,
    /// An alias: usable if it points to a scalar.
    Alias,
}

impl Loader<'_> {
    fn at(&self, span: Span) -> Location {
        Location {
            file: Arc::clone(self.file),
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }

    fn error(&self, at: &Location, problem: impl Into<String>) -> PipelineError {
        PipelineError::config(at, None, None, problem)
    }

    fn on_event(&mut self, event: Event<'_>, span: Span) -> Result<(), PipelineError> {
        let at = self.at(span);
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd => Ok(()),
            Event::DocumentStart(_) => {
                self.anchors.clear();
                self.root = None;
                Ok(())
            }
            Event::DocumentEnd => {
                let root = self
                    .root
                    .take()
                    .unwrap_or_else(|| Node::new(Value::Null, at));
                self.docs.push(root);
                Ok(())
            }
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(&text, style, tag.as_deref()).map_err(|p| self.error(&at, p))?;
                let merge = text == "<<" && tag.is_none();
                let key = KeyForm::Scalar {
                    text: text.into_owned(),
                    merge,
                };
                self.finish(Node::new(value, at), anchor, key)
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_depth(&at)?;
                let reference = match tag.as_deref() {
                    None => false,
                    Some(t) if is_core(t, "seq") => false,
                    Some(t) if is_reference(t) => true,
                    Some(t) => return Err(self.error(&at, unknown_tag(t))),
                };
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    at,
                    anchor,
                    reference,
                });
                Ok(())
            }
            Event::MappingStart(anchor, tag) => {
                self.check_depth(&at)?;
                match tag.as_deref() {
                    None => {}
                    Some(t) if is_core(t, "map") => {}
                    Some(t) if is_reference(t) => {
                        return Err(
                            self.error(&at, "!reference takes a list: !reference [job, key]")
                        );
                    }
                    Some(t) => return Err(self.error(&at, unknown_tag(t))),
                }
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    key: None,
                    at,
                    anchor,
                });
                Ok(())
            }
            Event::SequenceEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    items,
                    at,
                    anchor,
                    reference,
                }) => {
                    let value = if reference {
                        Value::Reference(items)
                    } else {
                        Value::Seq(items)
                    };
                    self.finish(Node::new(value, at), anchor, KeyForm::Collection)
                }
                _ => Err(self.error(&at, "unbalanced end of list")),
            },
            Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Map {
                    map,
                    key: None,
                    at,
                    anchor,
                }) => self.finish(Node::new(Value::Map(map), at), anchor, KeyForm::Collection),
                _ => Err(self.error(&at, "unbalanced end of mapping")),
            },
            Event::Alias(id) => {
                let node = self.alias(id, at)?;
                self.finish(node, 0, KeyForm::Alias)
            }
        }
    }

    fn check_depth(&self, at: &Location) -> Result<(), PipelineError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(
                at,
                format!("lists and mappings nest deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn bomb(&self, at: &Location, overrun: Overrun) -> PipelineError {
        self.error(at, self.alias_budget.exceeded(overrun))
    }

    fn alias(&mut self, id: usize, at: Location) -> Result<Node, PipelineError> {
        let Some(anchored) = self.anchors.get(&id) else {
            return Err(self.error(
                &at,
                "this alias refers to an anchor that is not defined before it (or contains it)",
            ));
        };
        let mut budget = self.alias_budget;
        let height = match budget.charge(anchored) {
            Ok(height) => height,
            Err(overrun) => return Err(self.bomb(&at, overrun)),
        };
        if self.stack.len() + height > MAX_DEPTH {
            return Err(self.error(
                &at,
                format!("this alias makes lists and mappings nest deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.alias_budget = budget;
        let mut node = anchored.clone();
        node.at = at;
        Ok(node)
    }

    /// Hands a finished node to its parent (or makes it the document's root).
    fn finish(&mut self, node: Node, anchor: usize, form: KeyForm) -> Result<(), PipelineError> {
        if anchor > 0 {
            if let Err(overrun) = self.alias_budget.charge(&node) {
                return Err(self.bomb(&node.at, overrun));
            }
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                self.root = Some(node);
                Ok(())
            }
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Map { map, key, .. }) => match key.take() {
                None => {
                    *key = Some(
                        key_of(node, form)
                            .map_err(|(at, p)| PipelineError::config(&at, None, None, p))?,
                    );
                    Ok(())
                }
                Some(key) => insert(map, key, node),
            },
        }
    }
}

fn key_of(node: Node, form: KeyForm) -> Result<Key, (Location, &'static str)> {
    let at = node.at.clone();
    let (text, merge) = match form {
        KeyForm::Scalar { text, merge } => (text, merge),
        KeyForm::Collection => {
            return Err((
                at,
                "a mapping key must be a plain value, not a list or mapping",
            ));
        }
        KeyForm::Alias => match node.value {
            Value::Str(s) => (s, false),
            Value::Int(i) => (i.to_string(), false),
            Value::Float(f) => (f.to_string(), false),
            Value::Bool(b) => (b.to_string(), false),
            Value::Null => (String::new(), false),
            _ => {
                return Err((
                    at,
                    "a mapping key must be a plain value, not a list or mapping",
                ));
            }
        },
    };
    Ok(Key { text, merge, at })
}

/// Inserts one key/value pair; `<<` merges the value's mapping(s) the way Psych does: keys
/// already present are overwritten (so `<<` first, explicit keys after, is the pattern that
/// lets explicit keys win), and in a list the earlier mapping wins over later ones.
fn insert(map: &mut Map, key: Key, node: Node) -> Result<(), PipelineError> {
    if !key.merge {
        map.insert(key.text, node);
        return Ok(());
    }
    let expected = "`<<` merges a mapping or a list of mappings: `<<: *anchor` or `<<: [*a, *b]`";
    match node.value {
        Value::Map(merged) => {
            for (k, v) in merged {
                map.insert(k, v);
            }
        }
        Value::Seq(items) => {
            let mut merged = Map::new();
            for item in items.into_iter().rev() {
                let Value::Map(m) = item.value else {
                    return Err(PipelineError::config(&item.at, None, None, expected));
                };
                for (k, v) in m {
                    merged.insert(k, v);
                }
            }
            for (k, v) in merged {
                map.insert(k, v);
            }
        }
        _ => return Err(PipelineError::config(&key.at, None, None, expected)),
    }
    Ok(())
}

fn is_core(tag: &Tag, suffix: &str) -> bool {
    tag.handle == CORE_TAG && tag.suffix == suffix
}

fn is_reference(tag: &Tag) -> bool {
    tag.handle == "!" && tag.suffix == "reference"
}

fn unknown_tag(tag: &Tag) -> String {
    format!("unknown YAML tag {tag}; GitLab CI files may use only !reference")
}

/// Resolves a scalar: quoted and block scalars are strings; plain ones follow YAML 1.1 as Psych
/// reads them (`yes`/`on` are booleans, `010` is octal, `1:30` is 90).
fn scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    let Some(tag) = tag else {
        return Ok(if style == ScalarStyle::Plain {
            plain(text)
        } else {
            Value::Str(text.to_owned())
        });
    };
    if is_reference(tag) {
        return Err("!reference takes a list: !reference [job, key]".to_owned());
    }
    if tag.handle == "!" && tag.suffix.is_empty() {
        return Ok(Value::Str(text.to_owned()));
    }
    if tag.handle != CORE_TAG {
        return Err(unknown_tag(tag));
    }
    let wrong = |what: &str| format!("{text:?} is not {what} (tagged {tag})");
    Ok(match tag.suffix.as_str() {
        "null" => Value::Null,
        "bool" => match plain(text) {
            v @ Value::Bool(_) => v,
            _ => return Err(wrong("a boolean")),
        },
        "int" => match plain(text) {
            v @ Value::Int(_) => v,
            _ => return Err(wrong("an integer")),
        },
        "float" => match plain(text) {
            v @ Value::Float(_) => v,
            Value::Int(i) => Value::Float(i as f64),
            _ => return Err(wrong("a number")),
        },
        _ => Value::Str(text.to_owned()),
    })
}

/// YAML 1.1 resolution of a plain scalar (Psych's ScalarScanner, less dates and symbols, which
/// GitLab refuses or never meets).
pub(crate) fn plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        _ => {}
    }
    let lower = text.to_ascii_lowercase();
    match lower.as_str() {
        "yes" | "true" | "on" => return Value::Bool(true),
        "no" | "false" | "off" => return Value::Bool(false),
        ".inf" | "+.inf" => return Value::Float(f64::INFINITY),
        "-.inf" => return Value::Float(f64::NEG_INFINITY),
        ".nan" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(v) = integer(text) {
        return v;
    }
    if let Some(v) = float(text) {
        return Value::Float(v);
    }
    if let Some(v) = sexagesimal(text) {
        return v;
    }
    Value::Str(text.to_owned())
}

fn split_sign(text: &str) -> (bool, &str) {
    match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    }
}

/// An integer in Psych's (non-strict) syntax: `0b…`, `0x…`, `0…` octal, decimal with `_` or `,`
/// separators. Too large for 64 bits: kept as its text, as Ruby would print the big number.
fn integer(text: &str) -> Option<Value> {
    let (negative, body) = split_sign(text);
    let (radix, digits) = if let Some(d) = body.strip_prefix("0b") {
        (2, d)
    } else if let Some(d) = body.strip_prefix("0x") {
        (16, d)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    let valid = match radix {
        10 => decimal_digits(digits),
        _ => {
            !digits.is_empty()
                && digits
                    .chars()
                    .all(|c| c == '_' || c == ',' || c.is_digit(radix))
                && digits.chars().any(|c| c.is_digit(radix))
        }
    };
    if !valid {
        return None;
    }
    let clean: String = digits.chars().filter(|c| *c != '_' && *c != ',').collect();
    let parsed = i64::from_str_radix(&clean, radix)
        .ok()
        .and_then(|v| if negative { v.checked_neg() } else { Some(v) });
    Some(match parsed {
        Some(v) => Value::Int(v),
        None => Value::Str(text.to_owned()),
    })
}

/// `0`, or a digit 1-9 followed by digits, each optionally after one `_` or `,`.
fn decimal_digits(digits: &str) -> bool {
    let bytes = digits.as_bytes();
    match bytes {
        [] => false,
        [b'0'] => true,
        [first, rest @ ..] if (b'1'..=b'9').contains(first) => {
            let mut after_separator = false;
            for b in rest {
                match b {
                    b'0'..=b'9' => after_separator = false,
                    b'_' | b',' if !after_separator => after_separator = true,
                    _ => return false,
                }
            }
            !after_separator
        }
        _ => false,
    }
}

/// A float in Psych's syntax: needs a `.`; an exponent needs a sign.
fn float(text: &str) -> Option<f64> {
    let (_, body) = split_sign(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int_part, frac) = mantissa.split_once('.')?;
    let int_ok = int_part.is_empty()
        || (int_part.as_bytes()[0].is_ascii_digit()
            && int_part
                .chars()
                .all(|c| c.is_ascii_digit() || c == '_' || c == ','));
    let frac_ok = frac.chars().all(|c| c.is_ascii_digit());
    let has_digit = int_part.chars().any(|c| c.is_ascii_digit()) || !frac.is_empty();
    let exp_ok = match exponent {
        None => true,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-'])?;
            !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
        }
    };
    if !(int_ok && frac_ok && has_digit && exp_ok) {
        return None;
    }
    let clean: String = text.chars().filter(|c| *c != '_' && *c != ',').collect();
    clean.parse().ok()
}

/// YAML 1.1 base-60 integers: `1:30` is 90, `1:00:00` is 3600.
fn sexagesimal(text: &str) -> Option<Value> {
    let (negative, body) = split_sign(text);
    let mut parts = body.split(':');
    let head = parts.next()?;
    if head.is_empty()
        || !head.as_bytes()[0].is_ascii_digit()
        || !head.chars().all(|c| c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    let mut total: i64 = head.replace('_', "").parse().ok()?;
    let mut any = false;
    for part in parts {
        any = true;
        let valid = matches!(part.len(), 1 | 2)
            && part.chars().all(|c| c.is_ascii_digit())
            && part.parse::<u8>().is_ok_and(|v| v < 60)
            && !(part.len() == 2 && part.as_bytes()[0] > b'5');
        if !valid {
            return None;
        }
        total = total
            .checked_mul(60)?
            .checked_add(part.parse::<i64>().ok()?)?;
    }
    if !any {
        return None;
    }
    Some(Value::Int(if negative { -total } else { total }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<str> {
        Arc::from("ci.yml")
    }

    fn one(text: &str) -> Node {
        load_config(text, &file()).unwrap()
    }

    fn get<'a>(node: &'a Node, path: &[&str]) -> &'a Node {
        path.iter()
            .fold(node, |n, k| n.as_map().unwrap().get(*k).unwrap())
    }

    #[test]
    fn plain_scalars_follow_yaml_1_1_like_psych() {
        let cases: &[(&str, Value)] = &[
            ("yes", Value::Bool(true)),
            ("Off", Value::Bool(false)),
            ("~", Value::Null),
            ("010", Value::Int(8)),
            ("0x1F", Value::Int(31)),
            ("0b101", Value::Int(5)),
            ("1_000", Value::Int(1000)),
            ("1,000", Value::Int(1000)),
            ("-42", Value::Int(-42)),
            ("1:30", Value::Int(90)),
            ("1:00:00", Value::Int(3600)),
            ("1.5", Value::Float(1.5)),
            ("1.0e+3", Value::Float(1000.0)),
            ("08", Value::Str("08".into())),
            ("1e3", Value::Str("1e3".into())),
            ("1__0", Value::Str("1__0".into())),
            ("12:75", Value::Str("12:75".into())),
            ("alpine:3.20", Value::Str("alpine:3.20".into())),
            (
                "99999999999999999999",
                Value::Str("99999999999999999999".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&plain(text), want, "{text}");
        }
    }

    #[test]
    fn quoted_scalars_and_str_tags_stay_strings() {
        let doc = one("a: 'yes'\nb: !!str 10\nc: \"010\"\nd: !!int '7'\n");
        assert_eq!(get(&doc, &["a"]).value, Value::Str("yes".into()));
        assert_eq!(get(&doc, &["b"]).value, Value::Str("10".into()));
        assert_eq!(get(&doc, &["c"]).value, Value::Str("010".into()));
        assert_eq!(get(&doc, &["d"]).value, Value::Int(7));
    }

    #[test]
    fn anchors_and_aliases_copy_trees() {
        let doc = one("a: &x {k: [1, 2]}\nb: *x\n");
        assert_eq!(get(&doc, &["a"]).value, get(&doc, &["b"]).value);
        assert_eq!(get(&doc, &["b"]).at.line, 2);
    }

    #[test]
    fn merge_keys_merge_one_mapping_or_a_list_with_psych_precedence() {
        let doc = one("base: &b {x: 1, y: 1}\nother: &o {y: 2, z: 2}\n\
             one: {<<: *b, y: 9}\n\
             list: {<<: [*b, *o]}\n\
             before: {y: 9, <<: *b}\n");
        let one_ = get(&doc, &["one"]).as_map().unwrap();
        assert_eq!(one_["x"].value, Value::Int(1));
        assert_eq!(one_["y"].value, Value::Int(9));
        let list = get(&doc, &["list"]).as_map().unwrap();
        // earlier mappings in the list win
        assert_eq!(list["y"].value, Value::Int(1));
        assert_eq!(list["z"].value, Value::Int(2));
        assert!(!list.contains_key("<<"));
        // a merge after an explicit key overwrites it, as in Psych
        assert_eq!(get(&doc, &["before", "y"]).value, Value::Int(1));
    }

    #[test]
    fn merge_of_a_scalar_is_an_error_with_position() {
        let err = load_config("a: &s hi\nb:\n  <<: *s\n", &file()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("ci.yml:3:"), "{text}");
        assert!(text.contains("`<<` merges a mapping"), "{text}");
    }

    #[test]
    fn reference_tags_are_kept_for_later_and_other_tags_refused() {
        let doc = one("a: !reference [.x, script]\n");
        let Value::Reference(items) = &get(&doc, &["a"]).value else {
            panic!("not a reference")
        };
        assert_eq!(items.len(), 2);
        let err = load_config("a: !custom [x]\n", &file())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown YAML tag !custom"), "{err}");
        let err = load_config("a: !reference x\n", &file())
            .unwrap_err()
            .to_string();
        assert!(err.contains("!reference takes a list"), "{err}");
    }

    #[test]
    fn malformed_yaml_reports_line_and_column() {
        let err = load_config("a: 1\nb: [1, 2\nc: 3\n", &file()).unwrap_err();
        let PipelineError::Syntax { at, .. } = &err else {
            panic!("{err}")
        };
        assert!(at.line >= 2, "{err}");
        assert!(err.to_string().starts_with("ci.yml:"), "{err}");
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = load_config(&bomb, &file()).unwrap_err().to_string();
        assert!(err.contains("YAML bomb"), "{err}");
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let err = load_config(&deep, &file()).unwrap_err().to_string();
        assert!(err.contains("nest deeper"), "{err}");
        // Anchors wrapped around a big alias copy it at every level: bounded too.
        let big = format!("a0: &a0 [{}]\n", vec!["x"; 20_000].join(", "));
        let mut nested = String::from("b: ");
        for i in 0..60 {
            nested.push_str(&format!("&p{i} ["));
        }
        nested.push_str("*a0");
        nested.push_str(&"]".repeat(60));
        let err = load_config(&format!("{big}{nested}\n"), &file())
            .unwrap_err()
            .to_string();
        assert!(err.contains("YAML bomb"), "{err}");
        let dashes = "- ".repeat(50_000);
        assert!(load_config(&dashes, &file()).is_err());
    }

    #[test]
    fn repeated_keys_keep_first_place_and_last_value() {
        let doc = one("a: 1\nb: 2\na: 3\n");
        let map = doc.as_map().unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(map["a"].value, Value::Int(3));
    }

    #[test]
    fn spec_header_documents() {
        let doc = one("spec: {}\n---\njob: {script: x}\n");
        assert!(doc.as_map().unwrap().contains_key("job"));
        let err = load_config("spec:\n  inputs: {a: {}}\n---\njob: {}\n", &file()).unwrap_err();
        assert!(err.to_string().contains("spec:inputs"), "{err}");
        assert!(load_config("a: 1\n---\nb: 2\n", &file()).is_err());
        assert!(one("").is_null());
        assert!(one("# only a comment\n").is_null());
    }

    #[test]
    fn deep_merge_merges_maps_and_replaces_the_rest() {
        let mut a = one("v: {A: 1, B: 1}\ns: [1, 2]\nonly_a: 1\n")
            .as_map()
            .unwrap()
            .clone();
        let b = one("v: {B: 2, C: 2}\ns: [3]\n").as_map().unwrap().clone();
        deep_merge(&mut a, b);
        let v = a["v"].as_map().unwrap();
        assert_eq!(
            (
                v["A"].value.clone(),
                v["B"].value.clone(),
                v["C"].value.clone()
            ),
            (Value::Int(1), Value::Int(2), Value::Int(2))
        );
        let Value::Seq(s) = &a["s"].value else {
            panic!()
        };
        assert_eq!(s.len(), 1);
        assert!(a.contains_key("only_a"));
    }

    #[test]
    fn a_big_anchored_scalar_aliased_many_times_is_refused() {
        // Few nodes, many bytes: 2 MiB of text copied 64 times would be 128 MiB.
        let big = "x".repeat(2 << 20);
        let aliases = vec!["*big"; 64].join(", ");
        let text = format!("a: &big {big}\nb: [{aliases}]\n");
        // Not `unwrap_err`: on success it would print 130 MiB of the tree.
        let Err(err) = load_config(&text, &file()) else {
            panic!("the aliases were expanded");
        };
        let err = err.to_string();
        assert!(err.starts_with("ci.yml:2:"), "{err}");
        assert!(err.contains("MiB"), "{err}");
    }

    #[test]
    fn moderate_anchored_text_aliased_a_few_times_is_fine() {
        let big = "x".repeat(1 << 20);
        let text = format!("a: &big {big}\nb: [{}]\n", ["*big"; 10].join(", "));
        let mut budget = CopyBudget::pipeline();
        let doc = load_config_with(&text, &file(), &mut budget).map_err(|e| e.to_string());
        assert!(doc.is_ok(), "{:?}", doc.err());
        assert_eq!(budget.bytes, MAX_ALIAS_BYTES - 11 * (1 << 20));
    }

    proptest::proptest! {
        /// Every anchor and alias takes its tree's text out of the byte budget; the copy that
        /// would overdraw it fails, naming the limit and the line of the anchor or alias.
        #[test]
        fn alias_copies_are_bounded_by_bytes(
            len in 1usize..1100,
            aliases in 0usize..12,
            in_map: bool,
        ) {
            const LIMIT: usize = 1000;
            let value = "x".repeat(len);
            // In a mapping, the key `k` is one more byte of text per copy.
            let (anchored, per_copy) = if in_map {
                (format!("{{k: {value}}}"), len + 1)
            } else {
                (value, len)
            };
            let text = format!("a: &a {anchored}\nb: [{}]\n", vec!["*a"; aliases].join(", "));
            let mut budget = CopyBudget::new(usize::MAX, LIMIT);
            let result = load_config_with(&text, &file(), &mut budget).map_err(|e| e.to_string());
            let copied = per_copy * (aliases + 1);
            if copied <= LIMIT {
                proptest::prop_assert!(result.is_ok(), "{:?}", result.err());
                proptest::prop_assert_eq!(budget.bytes, LIMIT - copied);
            } else {
                let err = result.err().unwrap_or_default();
                proptest::prop_assert!(err.contains("more than 1000 bytes of text"), "{}", err);
                let line = if per_copy > LIMIT { "ci.yml:1:" } else { "ci.yml:2:" };
                proptest::prop_assert!(err.starts_with(line), "{}", err);
            }
        }
    }
}
