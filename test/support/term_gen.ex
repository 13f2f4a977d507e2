defmodule Yggdrasil.TermGen do
  @moduledoc false
  # Random Erlang terms for fuzzing, with no dependency (no stream_data).
  #
  # `term/1` draws from every kind of term the VM has: atoms (a fixed pool,
  # so fuzzing never fills the atom table), small and big integers, floats,
  # binaries, sub-binaries and bitstrings, proper and improper lists, deep
  # tuples, small and large maps, structs (including channels with junk in
  # their fields), live, dead and remote-looking pids, local and
  # remote-looking references, ports and funs. Everything comes from the
  # process's `:rand` state: seed it with `seed/1` to reproduce a run.

  import Bitwise

  @atoms [
    nil,
    true,
    false,
    :ok,
    :error,
    :elixir,
    :default,
    :json,
    :bridge,
    :name,
    :adapter,
    :"",
    :"with space",
    :héllo,
    :"Elixir.Yggdrasil.Channel",
    :"Elixir.Nope",
    :"$yggdrasil_emptied",
    :Y_EVENT,
    :table,
    :plain,
    :more,
    String.to_atom(String.duplicate("a", 200))
  ]

  @doc "Seeds this process's generator; returns the seed for reproduction."
  def seed(seed \\ :erlang.unique_integer([:positive])) do
    :rand.seed(:exsss, {seed, seed * 31 + 7, seed * 131 + 11})
    seed
  end

  @doc "A random term of roughly `size` nodes at most."
  def term(size \\ 20)
  def term(size) when size <= 1, do: leaf()

  def term(size) do
    case :rand.uniform(14) do
      n when n <= 5 -> leaf()
      6 -> list(size)
      7 -> improper_list(size)
      8 -> tuple(size)
      9 when size >= 20 -> deep(size)
      9 -> tuple(size)
      10 -> map(size)
      11 -> struct_term(size)
      12 -> channel_like(size)
      _ -> keyword(size)
    end
  end

  @doc "A random leaf (non-container) term."
  def leaf do
    case :rand.uniform(10) do
      1 -> atom()
      2 -> integer()
      3 -> float()
      4 -> binary()
      5 -> sub_binary()
      6 -> bitstring()
      7 -> pid()
      8 -> reference()
      9 -> fun()
      _ -> one_of([&port/0, fn -> [] end, fn -> {} end, fn -> %{} end, fn -> "" end])
    end
  end

  def atom, do: Enum.random(@atoms)

  def integer do
    case :rand.uniform(6) do
      1 -> :rand.uniform(256) - 128
      2 -> :rand.uniform(1 <<< 27) - (1 <<< 26)
      3 -> (1 <<< 59) + :rand.uniform(1_000)
      4 -> -(1 <<< 64) - :rand.uniform(1_000)
      5 -> Integer.pow(7, 300 + :rand.uniform(700))
      _ -> Enum.random([0, -1, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, -0x8000000000000000])
    end
  end

  def float do
    case :rand.uniform(7) do
      1 -> 0.0
      2 -> -0.0
      3 -> 1.0e308
      4 -> -1.0e-308
      5 -> 5.0e-324
      6 -> :rand.uniform() * 1.0e6
      _ -> :rand.normal()
    end
  end

  def binary do
    case :rand.uniform(5) do
      1 -> ""
      2 -> :rand.bytes(:rand.uniform(64))
      3 -> "text #{:rand.uniform(1000)} ✓"
      4 -> :rand.bytes(200 + :rand.uniform(5_000))
      _ -> Enum.random(["{}", "[1,2", "{\"a\":1}", "null", "\"x\"", <<0xFF, 0xFE>>, "[[[[]]]]"])
    end
  end

  @doc "A binary that shares another (larger) binary's data."
  def sub_binary do
    base = :rand.bytes(100 + :rand.uniform(200))
    start = :rand.uniform(50)
    binary_part(base, start, :rand.uniform(byte_size(base) - start))
  end

  def bitstring do
    bits = :rand.uniform(7)
    <<:rand.uniform(255)::size(8), 0::size(bits)>>
  end

  def pid do
    case :rand.uniform(4) do
      1 -> self()
      2 -> dead_pid()
      3 -> remote_pid()
      _ -> bystander()
    end
  end

  @doc "A live process that swallows whatever it is sent."
  def bystander do
    case Process.whereis(:yggdrasil_fuzz_bystander) do
      nil ->
        pid = spawn(fn -> swallow() end)

        try do
          Process.register(pid, :yggdrasil_fuzz_bystander)
          pid
        rescue
          ArgumentError ->
            Process.exit(pid, :kill)
            bystander()
        end

      pid ->
        pid
    end
  end

  defp swallow do
    receive do
      _ -> swallow()
    end
  end

  def dead_pid do
    pid = spawn(fn -> :ok end)
    ref = Process.monitor(pid)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> pid
    end
  end

  @doc "A pid that claims to live on another node (never connected)."
  def remote_pid do
    node = "fuzz#{:rand.uniform(3)}@nohost"
    id = :rand.uniform(32_767)

    :erlang.binary_to_term(
      <<131, 88, 118, byte_size(node)::16, node::binary, id::32, 0::32, 1::32>>
    )
  end

  def reference do
    case :rand.uniform(3) do
      1 -> make_ref()
      2 -> remote_reference()
      _ -> :erlang.list_to_ref(~c"#Ref<0.1.2.3>")
    end
  end

  def remote_reference do
    node = "fuzz@nohost"

    :erlang.binary_to_term(
      <<131, 90, 3::16, 118, byte_size(node)::16, node::binary, 1::32, 1::32, 2::32, 3::32>>
    )
  end

  def port do
    case Port.list() do
      [] -> make_ref()
      ports -> Enum.random(ports)
    end
  end

  def fun do
    x = :rand.uniform(100)

    case :rand.uniform(5) do
      1 -> fn -> x end
      2 -> fn a, b -> {a, b, x} end
      3 -> &Enum.map/2
      4 -> &:erlang.self/0
      _ -> &__MODULE__.term/1
    end
  end

  def list(size) do
    for _ <- 1..:rand.uniform(max(1, min(size, 12))), do: term(div(size, 3))
  end

  def improper_list(size) do
    head = list(size)
    tail = one_of([&leaf/0, fn -> {:tail} end, fn -> "tail" end, fn -> 1.5 end])
    head ++ tail
  end

  def tuple(size), do: size |> list() |> List.to_tuple()

  @doc "A chain of nested tuples, lists or maps, up to a few thousand deep."
  def deep(_size) do
    depth = Enum.random([50, 200, 1_000, 5_000])
    inner = leaf()

    Enum.reduce(1..depth, inner, fn _, acc ->
      case :rand.uniform(3) do
        1 -> {acc}
        2 -> [acc]
        _ -> %{"k" => acc}
      end
    end)
  end

  def map(size) do
    # More than 32 keys makes a hash map instead of a flat one.
    {count, child} =
      if :rand.uniform(6) == 1,
        do: {33 + :rand.uniform(40), 1},
        else: {:rand.uniform(max(1, min(size, 8))), div(size, 4)}

    Map.new(1..count, fn _ -> {key(), term(child)} end)
  end

  defp key, do: one_of([&atom/0, &binary/0, &integer/0, &leaf/0])

  def struct_term(size) do
    one_of([
      fn -> %Yggdrasil.Channel{name: term(div(size, 2))} end,
      fn ->
        %Yggdrasil.Channel{
          name: term(div(size, 2)),
          adapter: one_of([fn -> term(2) end, fn -> :elixir end, fn -> :bridge end]),
          transformer: one_of([fn -> term(2) end, fn -> :default end, fn -> :json end]),
          backend: one_of([fn -> term(2) end, fn -> :default end, fn -> nil end]),
          namespace: term(2),
          metadata: term(3)
        }
      end,
      fn -> %URI{host: "x"} end,
      fn -> %{__struct__: term(2), name: term(3)} end,
      fn -> MapSet.new(list(size)) end
    ])
  end

  # Picks one generator and runs only that one.
  defp one_of(generators), do: Enum.random(generators).()

  @doc "Maps and keyword lists that look like channels, often valid ones."
  def channel_like(size) do
    fields =
      for {field, generate} <- [
            name: fn ->
              one_of([fn -> term(div(size, 2)) end, fn -> "fuzz" end, fn -> {:fuzz, 1} end])
            end,
            adapter: fn -> one_of([fn -> :elixir end, fn -> :elixir end, fn -> term(2) end]) end,
            transformer: fn ->
              one_of([fn -> :default end, fn -> :json end, fn -> term(2) end])
            end,
            backend: fn -> one_of([fn -> :default end, fn -> nil end, fn -> term(2) end]) end,
            namespace: fn -> term(2) end,
            metadata: fn -> term(2) end,
            junk: fn -> term(2) end
          ],
          :rand.uniform(3) > 1,
          do: {field, generate.()}

    if :rand.uniform(2) == 1, do: Map.new(fields), else: fields
  end

  def keyword(size) do
    for _ <- 1..:rand.uniform(4), do: {Enum.random([:name, :adapter, :junk]), term(div(size, 3))}
  end
end
