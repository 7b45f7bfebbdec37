/// One merge rule seen from its pair: its rank (lower merges first) and the id
/// of the merged token.
struct BPEMerge: Sendable {
    var rank: Int32
    var id: TokenID
}

/// The key of a pair of token ids in the merge table.
@inline(__always)
func bpePairKey(_ left: TokenID, _ right: TokenID) -> UInt64 {
    UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
}

/// The BPE merge table and the merge loop, over token ids.
struct BPEMerges: Sendable {
    let table: [UInt64: BPEMerge]

    @inline(__always)
    func merge(_ left: TokenID, _ right: TokenID) -> BPEMerge? {
        table[bpePairKey(left, right)]
    }

    /// Merges `symbols` in place and returns how many remain at the front.
    ///
    /// Follows tokenizers' `Word::merge_all`: a queue ordered by (rank, position)
    /// holds the pairs that have a merge; the lowest is applied if the pair is
    /// still there (its merge still gives the same id), and the pairs it forms
    /// with its neighbours join the queue. On GPT-2's files this gives the same
    /// tokens as the Python "merge every occurrence of the best pair" loop; on odd
    /// files (a merge that creates a pair ranked before the current one) the two
    /// can differ, and this follows the fast tokenizer.
    func apply(_ symbols: inout [TokenID], scratch: inout BPEScratch) -> Int {
        let n = symbols.count
        if n < 2 { return n }
        if n == 2 {
            if let m = merge(symbols[0], symbols[1]) { symbols[0] = m.id; return 1 }
            return 2
        }
        scratch.reset(count: n)
        for k in 0..<(n - 1) {
            if let m = merge(symbols[k], symbols[k + 1]) {
                scratch.push(BPEQueueEntry(rank: m.rank, pos: Int32(k), id: m.id))
            }
        }
        while let top = scratch.pop() {
            let p = Int(top.pos)
            if symbols[p] < 0 { continue }  // merged into its left neighbour already
            let q = Int(scratch.next[p])
            if q < 0 { continue }
            guard let m = merge(symbols[p], symbols[q]), m.id == top.id else { continue }
            symbols[p] = m.id
            symbols[q] = -1
            let after = scratch.next[q]
            scratch.next[p] = after
            if after >= 0 { scratch.prev[Int(after)] = Int32(p) }
            let before = scratch.prev[p]
            if before >= 0, let left = merge(symbols[Int(before)], symbols[p]) {
                scratch.push(BPEQueueEntry(rank: left.rank, pos: before, id: left.id))
            }
            if after >= 0, let right = merge(symbols[p], symbols[Int(after)]) {
                scratch.push(BPEQueueEntry(rank: right.rank, pos: Int32(p), id: right.id))
            }
        }
        var count = 0
        for k in 0..<n where symbols[k] >= 0 {
            symbols[count] = symbols[k]
            count += 1
        }
        return count
    }
}

struct BPEQueueEntry {
    var rank: Int32
    var pos: Int32
    var id: TokenID

    @inline(__always)
    static func < (a: BPEQueueEntry, b: BPEQueueEntry) -> Bool {
        a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos)
    }
}

/// Reusable buffers for the merge loop: the linked list of live symbols and a
/// binary min-heap of candidate merges.
struct BPEScratch {
    var prev: [Int32] = []
    var next: [Int32] = []
    var heap: [BPEQueueEntry] = []

    mutating func reset(count n: Int) {
        prev.removeAll(keepingCapacity: true)
        next.removeAll(keepingCapacity: true)
        heap.removeAll(keepingCapacity: true)
        for k in 0..<n {
            prev.append(Int32(k - 1))
            next.append(k + 1 < n ? Int32(k + 1) : -1)
        }
    }

    mutating func push(_ entry: BPEQueueEntry) {
        heap.append(entry)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if !(heap[child] < heap[parent]) { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> BPEQueueEntry? {
        guard let last = heap.popLast() else { return nil }
        if heap.isEmpty { return last }
        let top = heap[0]
        heap[0] = last
        var parent = 0
        let count = heap.count
        while true {
            let left = 2 * parent + 1
            if left >= count { break }
            var best = left
            if left + 1 < count && heap[left + 1] < heap[left] { best = left + 1 }
            if !(heap[best] < heap[parent]) { break }
            heap.swapAt(best, parent)
            parent = best
        }
        return top
    }
}
