//! A parser for the Prometheus / OpenMetrics text exposition, enough to
//! read back samples by name and labels.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some(s) = parse_line(line) {
                samples.push(s);
            } else {
                panic!("unparsable exposition line: {line:?}");
            }
        }
        Exposition {
            samples,
            text: text.to_string(),
        }
    }

    /// Samples named `name` whose labels include every pair in `filter`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum of the values of matching samples.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.find(name, filter).map(|s| s.value).sum()
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i..]),
        None => {
            let mut it = line.split_whitespace();
            let name = it.next()?;
            let value = it.next()?.parse().ok()?;
            return Some(Sample {
                name: name.to_string(),
                labels: BTreeMap::new(),
                value,
            });
        }
    };
    let mut labels = BTreeMap::new();
    let bytes = rest.as_bytes();
    let mut i = 1;
    loop {
        if bytes.get(i) == Some(&b'}') {
            i += 1;
            break;
        }
        let eq = rest[i..].find('=')? + i;
        let key = rest[i..eq].trim_start_matches(',').trim().to_string();
        i = eq + 1;
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        i += 1;
        let mut value = String::new();
        loop {
            match bytes.get(i)? {
                b'\\' => {
                    match bytes.get(i + 1)? {
                        b'n' => value.push('\n'),
                        c => value.push(*c as char),
                    }
                    i += 2;
                }
                b'"' => {
                    i += 1;
                    break;
                }
                _ => {
                    let ch = rest[i..].chars().next()?;
                    value.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        labels.insert(key, value);
        if bytes.get(i) == Some(&b',') {
            i += 1;
        }
    }
    let value = rest[i..].split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let e = Exposition::parse(
            "# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"uote\"} 3\ny 2.5\nz{} 1\n# EOF\n",
        );
        assert_eq!(e.samples.len(), 3);
        assert_eq!(e.samples[0].labels["b"], "q\"uote");
        assert_eq!(e.sum("x_total", &[("a", "1")]), 3.0);
        assert_eq!(e.sum("y", &[]), 2.5);
    }
}
