//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Written by hand on purpose: aya's `Btf` keeps member data crate-private
//! and the one maintained standalone parser (btf-rs) is LGPL, which does not
//! fit a statically linked MIT/Apache binary. We need a small subset of the
//! format (kernel `Documentation/bpf/btf.rst`): the type section, struct and
//! union members, and the modifiers to see through, nothing else.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use burnwatch_common::offsets::KernelOffsets;

const BTF_MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    /// Bit offset within the parent.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: u32,
    /// Referenced type for modifiers, typedefs and pointers.
    ty: u32,
    members: Vec<Member>,
}

/// The kinds of named type [`Btf::type_id`] finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    /// A `typedef`: the kernel names a BTF-typed tracepoint by its
    /// `btf_trace_<name>` typedef.
    Typedef,
    /// A function: fentry/fexit attach to one.
    Func,
}

/// The parsed type section of one BTF blob.
pub struct Btf {
    types: Vec<Type>, // index = type id; id 0 is void
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u16_at(d: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        d.get(o..o + 2)
            .ok_or_else(|| anyhow!("BTF truncated at {o}"))?
            .try_into()?,
    ))
}

fn u32_at(d: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        d.get(o..o + 4)
            .ok_or_else(|| anyhow!("BTF truncated at {o}"))?
            .try_into()?,
    ))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Btf::parse(&data).with_context(|| format!("parsing BTF in {}", path.display()))
    }

    pub fn parse(d: &[u8]) -> Result<Btf> {
        if u16_at(d, 0)? != BTF_MAGIC {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = u32_at(d, 4)? as usize;
        let type_off = u32_at(d, 8)? as usize;
        let type_len = u32_at(d, 12)? as usize;
        let str_off = u32_at(d, 16)? as usize;
        let str_len = u32_at(d, 20)? as usize;
        let types_at = hdr_len + type_off;
        let strings = d
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| anyhow!("string section out of bounds"))?
            .to_vec();
        let end = types_at + type_len;
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            ty: 0,
            members: Vec::new(),
        }];
        let mut o = types_at;
        while o < end {
            let name = u32_at(d, o)?;
            let info = u32_at(d, o + 4)?;
            let size_or_type = u32_at(d, o + 8)?;
            o += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => o += 4,
                KIND_ARRAY => o += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = o + i * 12;
                        let raw = u32_at(d, m + 8)?;
                        members.push(Member {
                            name: u32_at(d, m)?,
                            ty: u32_at(d, m + 4)?,
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                        });
                    }
                    o += vlen * 12;
                }
                KIND_ENUM | KIND_FUNC_PROTO => o += vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => o += vlen * 12,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                other => bail!("unknown BTF kind {other}"),
            }
            types.push(Type {
                kind,
                name,
                ty: size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            let t = &btf.types[id];
            if t.kind == KIND_STRUCT && t.name != 0 {
                let n = btf.name(t.name).to_string();
                btf.structs_by_name.entry(n).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    /// The id of the first type named `name` of kind `kind`: what a
    /// program's `attach_btf_id` takes.
    pub fn type_id(&self, name: &str, kind: TypeKind) -> Option<u32> {
        let kind = match kind {
            TypeKind::Typedef => KIND_TYPEDEF,
            TypeKind::Func => KIND_FUNC,
        };
        (1..self.types.len())
            .find(|&id| {
                let t = &self.types[id];
                t.kind == kind && t.name != 0 && self.name(t.name) == name
            })
            .map(|id| id as u32)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.ty
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `member` in struct `strukt`, looking inside anonymous
    /// struct and union members (as C does).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| anyhow!("struct {strukt} not found in kernel BTF"))?;
        let bits = self
            .find_member(&self.types[id as usize], member, 0)
            .ok_or_else(|| anyhow!("struct {strukt} has no member {member}"))?;
        if bits % 8 != 0 {
            bail!("{strukt}.{member} is a bit field");
        }
        Ok(bits / 8)
    }

    fn find_member(&self, t: &Type, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            if m.name != 0 && self.name(m.name) == member {
                return Some(m.bit_offset);
            }
        }
        for m in &t.members {
            if m.name == 0 {
                let inner = self.resolve(m.ty)?;
                if (inner.kind == KIND_STRUCT || inner.kind == KIND_UNION)
                    && let Some(off) = self.find_member(inner, member, depth + 1)
                {
                    return Some(m.bit_offset + off);
                }
            }
        }
        None
    }

    /// Everything the programs need to walk from a task to a socket.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets> {
        Ok(KernelOffsets {
            task_files: self.member_offset("task_struct", "files")?,
            files_fdt: self.member_offset("files_struct", "fdt")?,
            fdt_max_fds: self.member_offset("fdtable", "max_fds")?,
            fdt_fd: self.member_offset("fdtable", "fd")?,
            file_inode: self.member_offset("file", "f_inode")?,
            file_private_data: self.member_offset("file", "private_data")?,
            inode_mode: self.member_offset("inode", "i_mode")?,
            socket_type: self.member_offset("socket", "type")?,
            socket_sk: self.member_offset("socket", "sk")?,
            skc_family: self.member_offset("sock_common", "skc_family")?,
            skc_num: self.member_offset("sock_common", "skc_num")?,
            skc_dport: self.member_offset("sock_common", "skc_dport")?,
            skc_daddr: self.member_offset("sock_common", "skc_daddr")?,
            skc_v6_daddr: self.member_offset("sock_common", "skc_v6_daddr")?,
            regs_arg: self.syscall_arg_regs()?,
            nr_readv: libc::SYS_readv as u32,
            nr_recvmsg: libc::SYS_recvmsg as u32,
            nr_recvfrom: libc::SYS_recvfrom as u32,
            sk_type: self.member_offset("sock", "sk_type")?,
        })
    }

    /// Where a syscall's first four arguments sit in `struct pt_regs`.
    fn syscall_arg_regs(&self) -> Result<[u32; 4]> {
        if let (Ok(a), Ok(b), Ok(c), Ok(d)) = (
            self.member_offset("pt_regs", "di"),
            self.member_offset("pt_regs", "si"),
            self.member_offset("pt_regs", "dx"),
            self.member_offset("pt_regs", "r10"),
        ) {
            return Ok([a, b, c, d]); // x86_64 (the syscall ABI's 4th is r10)
        }
        // arm64: x0 is overwritten by the return value; the kernel keeps the
        // first argument in orig_x0. x1..x3 are regs[1..3].
        let regs = self.member_offset("pt_regs", "regs")?;
        Ok([
            self.member_offset("pt_regs", "orig_x0")?,
            regs + 8,
            regs + 16,
            regs + 24,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made BTF blob: struct outer { int a; union { int b; struct { int c; int d; }; }; },
    /// typedef struct outer t_outer; int f(void);
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0t_outer\0f\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous struct { int c; int d; }
        push(&[0, (KIND_STRUCT << 24) | 2, 8, s("c"), 1, 0, s("d"), 1, 32]);
        // 3: anonymous union { int b; struct 2; }
        push(&[0, (KIND_UNION << 24) | 2, 8, s("b"), 1, 0, 0, 2, 0]);
        // 4: struct outer { int a; union 3 at 64 bits }
        push(&[
            s("outer"),
            (KIND_STRUCT << 24) | 2,
            16,
            s("a"),
            1,
            0,
            0,
            3,
            64,
        ]);
        // 5: typedef struct outer t_outer
        push(&[s("t_outer"), KIND_TYPEDEF << 24, 4]);
        // 6: int (void), 7: the function f of that prototype
        push(&[0, KIND_FUNC_PROTO << 24, 1]);
        push(&[s("f"), KIND_FUNC << 24, 6]);
        let mut d = Vec::new();
        d.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        d.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            d.extend_from_slice(&w.to_le_bytes());
        }
        d.extend_from_slice(&types);
        d.extend_from_slice(strings);
        d
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "d").unwrap(), 12);
        assert!(btf.member_offset("outer", "e").is_err());
        assert!(btf.member_offset("inner", "a").is_err());
    }

    #[test]
    fn finds_typedefs_and_funcs_by_name_and_kind() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.type_id("t_outer", TypeKind::Typedef), Some(5));
        assert_eq!(btf.type_id("f", TypeKind::Func), Some(7));
        assert_eq!(btf.type_id("outer", TypeKind::Typedef), None, "a struct");
        assert_eq!(btf.type_id("f", TypeKind::Typedef), None, "a function");
        assert_eq!(btf.type_id("g", TypeKind::Func), None);
        // Typedef resolution for member lookups is unchanged.
        assert_eq!(btf.member_offset("outer", "d").unwrap(), 12);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, definitely not").is_err());
        let mut b = blob();
        b.truncate(40);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn this_kernel_has_every_offset() {
        // The agent needs kernel BTF; so does this test (see preflight).
        let btf = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux")).unwrap();
        let o = btf.kernel_offsets().unwrap();
        // sock_common starts with the address pair, then the port pair.
        assert_eq!(o.skc_daddr, 0);
        assert!(o.skc_num > o.skc_dport || o.skc_dport == 12);
        assert!(o.task_files > 0 && o.file_private_data > 0);
        // The read program's fast path (direct loads, no helper call) is
        // taken only for this exact layout.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            o.regs_arg,
            burnwatch_common::offsets::X86_64_SYSCALL_ARG_REGS
        );
    }
}
