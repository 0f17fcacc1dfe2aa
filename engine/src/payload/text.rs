//! Text conditions on payload strings without a text index, as Qdrant evaluates them: both
//! sides split into words (maximal runs of letters and digits, lowercased); `text` needs every
//! query word among the value's words, `text_any` one of them, `phrase` the query's words
//! consecutively; `prefix` and `substring` compare the raw strings, case-sensitively.

/// The words of `text`: maximal runs of alphanumeric characters, lowercased.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A text test.
#[derive(Debug, Clone, PartialEq)]
pub enum TextTest {
    /// Every word (at least one).
    All(Vec<String>),
    /// At least one word.
    Any(Vec<String>),
    /// The words in a row (at least one).
    Phrase(Vec<String>),
    /// The value starts with this.
    Prefix(String),
    /// The value contains this.
    Substring(String),
}

impl TextTest {
    /// True when the string `value` passes.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            TextTest::All(q) => {
                let w = words(value);
                !q.is_empty() && q.iter().all(|t| w.contains(t))
            }
            TextTest::Any(q) => {
                let w = words(value);
                q.iter().any(|t| w.contains(t))
            }
            TextTest::Phrase(q) => {
                let w = words(value);
                !q.is_empty() && w.windows(q.len()).any(|win| win == q.as_slice())
            }
            TextTest::Prefix(p) => value.starts_with(p.as_str()),
            TextTest::Substring(s) => value.contains(s.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_tests() {
        assert_eq!(
            words("Hello, wörld_2 foo-bar"),
            ["hello", "wörld", "2", "foo", "bar"]
        );
        let v = "The quick brown fox";
        assert!(TextTest::All(words("QUICK fox")).matches(v));
        assert!(!TextTest::All(words("quick dog")).matches(v));
        assert!(!TextTest::All(vec![]).matches(v));
        assert!(TextTest::Any(words("dog fox")).matches(v));
        assert!(TextTest::Phrase(words("quick brown")).matches(v));
        assert!(!TextTest::Phrase(words("brown quick")).matches(v));
        assert!(TextTest::Prefix("The q".into()).matches(v));
        assert!(!TextTest::Prefix("the".into()).matches(v));
        assert!(TextTest::Substring("ck br".into()).matches(v));
    }
}
