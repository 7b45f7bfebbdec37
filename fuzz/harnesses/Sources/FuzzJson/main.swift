import FuzzSupport

@testable import LoRA  // JSON and SafeTensorsFile are `package` API (fuzz.sh builds in debug, testable)

// JSON.parse on arbitrary bytes; an accepted value is walked.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = Fuzz.buffer(data, size)
    Fuzz.expectingErrors {
        let value = try JSON.parse(input)
        walk(value, depth: 0)
    }
    return 0
}

func walk(_ v: JSONValue, depth: Int) {
    _ = v.kindName
    _ = v.intValue
    _ = v.doubleValue
    if let a = v.arrayValue { for x in a { walk(x, depth: depth + 1) } }
    if let o = v.objectValue {
        for (k, x) in o.members {
            precondition(o[k] != nil)
            walk(x, depth: depth + 1)
        }
        _ = o.duplicateKeys
    }
}

Fuzz.run(fuzz)
