defmodule Yggdrasil.JsonFidelityTest do
  # Spec section 6 / issue 10 point 4: `:json` decodes every valid JSON text
  # as Jason did: any nesting depth (never a crashed VM), integers of any
  # size exact both ways, `-0` as the integer 0 and `-0.0` as a float.
  use ExUnit.Case, async: true

  alias Yggdrasil.Channel
  alias Yggdrasil.Native
  alias Yggdrasil.Transformer.Json

  @channel %Channel{name: "json", transformer: :json}

  defp encode(term), do: Json.encode(@channel, term)
  defp decode(text), do: Json.decode(@channel, text)

  defp round_trip(term) do
    assert {:ok, text} = encode(term)
    assert {:ok, decoded} = decode(text)
    decoded
  end

  defp nested_lists(depth, leaf \\ 1), do: Enum.reduce(1..depth, leaf, fn _, acc -> [acc] end)

  defp nested_maps(depth, leaf \\ 1),
    do: Enum.reduce(1..depth, leaf, fn _, acc -> %{"a" => acc} end)

  # Depth of `[[...[leaf]...]]` / `%{"a" => %{"a" => ...}}`, without
  # recursing per level.
  defp depth([inner]), do: depth(inner, 1)
  defp depth(%{"a" => inner}), do: depth(inner, 1)
  defp depth([inner], n), do: depth(inner, n + 1)
  defp depth(%{"a" => inner}, n), do: depth(inner, n + 1)
  defp depth(_leaf, n), do: n

  describe "nesting depth" do
    test "100,000 nested arrays and objects decode" do
      arrays = String.duplicate("[", 100_000) <> "7" <> String.duplicate("]", 100_000)
      assert {:ok, list} = decode(arrays)
      assert depth(list) == 100_000

      objects = String.duplicate(~s({"a":), 100_000) <> "7" <> String.duplicate("}", 100_000)
      assert {:ok, map} = decode(objects)
      assert depth(map) == 100_000

      empty = String.duplicate("[", 100_000) <> String.duplicate("]", 100_000)
      assert {:ok, nested} = decode(empty)
      assert depth(nested) == 99_999
    end

    test "deep input also decodes on a normal scheduler (under 64 KB)" do
      text = String.duplicate("[", 15_000) <> String.duplicate("]", 15_000)
      assert {:ok, nested} = Native.json_decode(text)
      assert depth(nested) == 14_999

      # Past the normal scheduler's budget, the transformer goes dirty.
      text = String.duplicate("[", 30_000) <> String.duplicate("]", 30_000)
      assert byte_size(text) <= 64 * 1024
      assert :too_big == Native.json_decode(text)
      assert {:ok, nested} = decode(text)
      assert depth(nested) == 29_999
    end

    test "100,000 nested maps and lists encode and round-trip" do
      maps = nested_maps(100_000)
      assert {:ok, text} = encode(maps)
      assert text == String.duplicate(~s({"a":), 100_000) <> "1" <> String.duplicate("}", 100_000)
      assert {:ok, ^maps} = decode(text)

      lists = %{"d" => nested_lists(100_000)}
      assert round_trip(lists) == lists
    end

    test "deep invalid input is a clean error" do
      assert {:error, reason} = decode(String.duplicate("[", 1_000_000))
      assert is_binary(reason)
      assert {:error, _} = decode(String.duplicate("[", 100_000) <> String.duplicate("]", 99_999))
      assert {:error, _} = decode(String.duplicate(~s({"a":), 100_000) <> "1]")
      assert {:error, _} = encode(nested_maps(100_000, {:tuple}))
      assert {:error, _} = encode(%{"l" => nested_lists(100_000, [1 | 2])})
    end
  end

  describe "integers of any size" do
    test "decode exactly" do
      assert {:ok, 18_446_744_073_709_551_616} == decode("18446744073709551616")

      assert {:ok, -123_456_789_012_345_678_901_234_567_890} ==
               decode("-123456789012345678901234567890")

      assert {:ok, %{"n" => n}} = decode(~s({"n":#{2 ** 1000}}))
      assert n === 2 ** 1000

      assert {:ok, [-(2 ** 63) - 1, 2 ** 64 - 1, 2 ** 64]} ==
               decode("[#{-(2 ** 63) - 1},#{2 ** 64 - 1},#{2 ** 64}]")
    end

    test "encode exactly" do
      assert {:ok, ~s({"big":18446744073709551616})} == encode(%{"big" => 2 ** 64})
      assert {:ok, ~s({"big":-9223372036854775809})} == encode(%{"big" => -(2 ** 63) - 1})
      assert {:ok, ~s({"l":[1,#{2 ** 200}]})} == encode(%{"l" => [1, 2 ** 200]})
      assert {:ok, ~s({"1180591620717411303424":1})} == encode(%{(2 ** 70) => 1})
    end

    test "round-trip, up to thousands of digits" do
      for n <- [2 ** 64, -(2 ** 64), 2 ** 127 - 1, -(2 ** 521), 10 ** 999, 10 ** 5000 + 1] do
        assert %{"n" => ^n} = round_trip(%{"n" => n})
      end
    end

    test "a very long integer is left to a dirty scheduler" do
      text = Integer.to_string(10 ** 5000)
      assert :too_big == Native.json_decode(text)
      assert {:ok, 10 ** 5000} == decode(text)
      assert :too_big == Native.json_encode(%{"n" => 10 ** 200_000})
      assert {:ok, "{\"n\":1" <> zeros} = encode(%{"n" => 10 ** 200_000})
      assert zeros == String.duplicate("0", 200_000) <> "}"
    end
  end

  describe "zero and signs" do
    test "-0 is the integer 0; -0.0 stays a negative float" do
      assert {:ok, %{"n" => zero}} = decode(~s({"n":-0}))
      assert zero === 0

      for text <- ["-0.0", "-0e0", "-0.0E+0"] do
        assert {:ok, x} = decode(text)
        assert is_float(x) and x == 0.0
        assert <<1::1, _::63>> = <<x::float>>, "#{text} lost its sign"
      end

      assert {:ok, 0} == decode("0")
      assert {:ok, f} = decode("0.0")
      assert is_float(f)
    end
  end

  describe "the rest of the grammar" do
    test "valid texts" do
      assert {:ok, []} == decode(" \n\t\r[ ] ")
      assert {:ok, %{}} == decode("{ }")
      assert {:ok, 100.0} == decode("1E+2")
      assert {:ok, -0.0015} == decode("-1.5e-3")
      assert {:ok, "\0\b\f\n\r\t\"\\/"} == decode(~s("\\u0000\\b\\f\\n\\r\\t\\"\\\\\\/"))

      assert {:ok, %{"a" => [1, %{"b" => nil}], "c" => true}} ==
               decode(~s( { "a" : [ 1 , { "b" : null } ] , "c" : true } ))

      # Duplicate keys: the last one wins, as in Jason.
      assert {:ok, %{"a" => 2, "b" => 3}} == decode(~s({"a":1,"b":3,"a":2}))
    end

    test "invalid texts are errors with a position" do
      for bad <- [
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "[1,]",
            "[,1]",
            ~s("\t"),
            ~s("\\x"),
            ~s("\\u12"),
            ~s("\\udc00"),
            ~s("\\ud800\\u0041"),
            "tru",
            "nulls",
            "[",
            ~s({"a" 1}),
            "{1:2}",
            ~s({"a":1 "b":2}),
            "\"unterminated",
            "[1] [2]"
          ] do
        assert {:error, reason} = decode(bad), "decoded #{inspect(bad)}"
        assert reason =~ ~r/line \d+ column \d+/, "#{inspect(bad)}: #{reason}"
      end
    end

    test "random terms round-trip" do
      :rand.seed(:exsss, {10, 20, 30})

      for _ <- 1..300 do
        term = %{"t" => random_term(4)}
        assert round_trip(term) == term
      end
    end
  end

  defp random_term(0), do: random_scalar()

  defp random_term(size) do
    case :rand.uniform(4) do
      1 -> for _ <- 1..:rand.uniform(4), do: random_term(size - 1)
      2 -> Map.new(1..:rand.uniform(4), fn _ -> {random_string(), random_term(size - 1)} end)
      _ -> random_scalar()
    end
  end

  defp random_scalar do
    case :rand.uniform(7) do
      1 -> random_string()
      2 -> :rand.uniform(2 ** 64) - 2 ** 63
      3 -> (:rand.uniform(2 ** 300) - 2 ** 299) * Enum.random([1, 2 ** 64])
      4 -> :rand.normal() * :math.pow(10, :rand.uniform(200) - 100)
      5 -> Enum.random([true, false, nil])
      6 -> Enum.random([0, -1, 1, 0.0, -0.0, 1.0e308])
      7 -> ""
    end
  end

  defp random_string do
    for _ <- 1..:rand.uniform(8), into: "" do
      <<Enum.random([?a, ?", ?\\, ?/, 0, 7, 31, 127, 0xE9, 0x2028, 0x1F600])::utf8>>
    end
  end
end
