import Foundation

// The tokenizer's per-token tables in a few large arrays. GPT-2's 50,257
// tokens as one Swift array (and one dictionary key) each took about 10 MB
// of small heap blocks for the life of every process that loads a model;
// packed, the same tables take about 2 MB. With the freed blocks of
// reading the files handed back (Tokenizer's file initialisers), a model
// with GPT-2's tokenizer keeps 4.4 MiB more resident than without it,
// 16.0 MiB before (python/tests/test_model.py).

/// Byte strings packed in one buffer: entry i is bytes[starts[i] ..< starts[i + 1]].
struct PackedBytes: Sendable {
    private var bytes: [UInt8] = []
    private var starts: [Int32] = [0]

    var count: Int { starts.count - 1 }

    /// Appends an entry; throws when the buffer would pass 2 GiB.
    mutating func append<S: Collection>(_ s: S) throws where S.Element == UInt8 {
        guard bytes.count + s.count <= Int(Int32.max) else {
            throw LoRAError.invalidArgument("the tokenizer's strings exceed 2 GiB")
        }
        bytes.append(contentsOf: s)
        starts.append(Int32(bytes.count))
    }

    mutating func reserve(entries: Int, bytes n: Int) {
        starts.reserveCapacity(entries + 1)
        bytes.reserveCapacity(n)
    }

    subscript(i: Int) -> ArraySlice<UInt8> { bytes[Int(starts[i])..<Int(starts[i + 1])] }

    /// Whether entry i equals key, byte for byte.
    func equals(_ i: Int, _ key: UnsafeBufferPointer<UInt8>) -> Bool {
        let lo = Int(starts[i])
        let n = Int(starts[i + 1]) - lo
        guard n == key.count else { return false }
        return bytes.withUnsafeBufferPointer { b in
            n == 0 || memcmp(b.baseAddress! + lo, key.baseAddress!, n) == 0
        }
    }
}

/// Token strings (UTF-8 bytes, not `String`: canonically equivalent
/// spellings stay distinct) to ids: open addressing over packed keys.
struct TokenIndex: Sendable {
    private var keys = PackedBytes()
    private var ids: [TokenID] = []
    /// An entry index per slot, -1 when empty; a power of two, at least twice the entries.
    private var slots: [Int32]

    init(capacity: Int) {
        var n = 16
        while n < 2 * capacity { n <<= 1 }
        slots = [Int32](repeating: -1, count: n)
        ids.reserveCapacity(capacity)
    }

    /// FNV-1a: the keys are short and not chosen by an adversary who sees the table.
    private static func hash(_ key: UnsafeBufferPointer<UInt8>) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        return Int(truncatingIfNeeded: h ^ (h >> 29))
    }

    /// The slot holding key, or the empty slot where it would go.
    private func slot(of key: UnsafeBufferPointer<UInt8>) -> Int {
        let mask = slots.count - 1
        var s = TokenIndex.hash(key) & mask
        while true {
            let e = Int(slots[s])
            if e < 0 || keys.equals(e, key) { return s }
            s = (s + 1) & mask
        }
    }

    /// key → id, replacing the id of an equal key (as a dictionary's assignment).
    mutating func set(_ key: [UInt8], _ id: TokenID) throws {
        let s = key.withUnsafeBufferPointer { slot(of: $0) }
        if slots[s] >= 0 {
            ids[Int(slots[s])] = id
            return
        }
        if 2 * (ids.count + 1) > slots.count { try grow() }
        let free = key.withUnsafeBufferPointer { slot(of: $0) }
        slots[free] = Int32(ids.count)
        try keys.append(key)
        ids.append(id)
    }

    private mutating func grow() throws {
        guard slots.count < Int(Int32.max) / 2 else { throw LoRAError.invalidArgument("too many tokens") }
        slots = [Int32](repeating: -1, count: slots.count * 2)
        let mask = slots.count - 1
        for e in 0..<ids.count {
            var s = keys[e].withUnsafeBufferPointer { TokenIndex.hash($0) } & mask
            while slots[s] >= 0 { s = (s + 1) & mask }
            slots[s] = Int32(e)
        }
    }

    subscript(key: [UInt8]) -> TokenID? {
        key.withUnsafeBufferPointer { k in
            let e = Int(slots[slot(of: k)])
            return e < 0 ? nil : ids[e]
        }
    }
}
