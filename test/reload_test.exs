defmodule Yggdrasil.ReloadTest do
  # Loading `Yggdrasil.Native` again (`:code.load_file/1`, `l/1` in IEx, a
  # release upgrade) never leaves the VM without its engine (issue 21 item
  # 3). Each case runs in a VM of its own: a reload is global to a VM.
  use ExUnit.Case, async: true

  import Yggdrasil.Test.Helpers, only: [run_elixir: 1, run_elixir: 2, copy_app: 1, nif_library: 0]

  test "a reload while subscriptions exist keeps the loaded engine current and delivering" do
    out =
      run_elixir("""
      {:ok, _} = Application.ensure_all_started(:yggdrasil)
      Logger.configure(level: :error)
      {:ok, channel} = Yggdrasil.gen_channel(name: "reload")
      :ok = Yggdrasil.subscribe(channel)
      receive do {:Y_CONNECTED, ^channel} -> :ok after 2_000 -> raise "no Y_CONNECTED" end
      parent = self()

      other =
        spawn(fn ->
          :ok = Yggdrasil.subscribe(channel)
          send(parent, :subscribed)
          receive do {:Y_EVENT, _, message} -> send(parent, {:other, message}) end
        end)

      receive do :subscribed -> :ok after 2_000 -> raise "no subscriber" end
      show = &IO.puts(&1 <> ": " <> inspect(&2, width: :infinity))
      show.("load_file", :code.load_file(Yggdrasil.Native))
      # What IEx's l/1 does: purge the old code (there is none), load again.
      show.("purge", :code.purge(Yggdrasil.Native))
      show.("load_file again", :code.load_file(Yggdrasil.Native))
      show.("load_error", Yggdrasil.Native.load_error())
      show.("subscribers", Yggdrasil.subscriber_count(channel))
      show.("publish", Yggdrasil.publish(channel, "after the reload"))
      receive do {:Y_EVENT, ^channel, m} -> show.("got", m) after 2_000 -> show.("got", nil) end
      receive do {:other, m} -> show.("other got", m) after 2_000 -> show.("other got", nil) end
      show.("other alive", Process.alive?(other))
      """)

    assert out =~ "load_file: {:error, :on_load_failure}", out
    assert out =~ "load_file again: {:error, :on_load_failure}", out
    assert out =~ "load_error: nil", out
    assert out =~ "subscribers: 2", out
    assert out =~ "publish: :ok", out
    assert out =~ ~s(got: "after the reload"), out
    assert out =~ ~s(other got: "after the reload"), out
    refute out =~ "not loaded", out
  end

  test "without the library a reload keeps the clear error, and once it is there loads it" do
    app = copy_app(false)
    library = Path.join(app, "priv/native/libyggdrasil_nif.so")

    out =
      run_elixir(
        """
        show = &IO.puts(&1 <> ": " <> inspect(&2, width: :infinity))
        show.("start", Application.ensure_all_started(:yggdrasil))
        show.("reload without", :code.load_file(Yggdrasil.Native))
        show.("error without", Yggdrasil.Native.load_error())
        show.("info without", (try do Yggdrasil.Native.info() rescue e -> Exception.message(e) end))
        File.cp!(#{inspect(nif_library())}, #{inspect(library)})
        # The reload above made the first copy old code: purge it, as l/1 does.
        show.("purge", :code.purge(Yggdrasil.Native))
        show.("reload with", :code.load_file(Yggdrasil.Native))
        show.("error with", Yggdrasil.Native.load_error())
        show.("start with", Application.ensure_all_started(:yggdrasil))
        {:ok, channel} = Yggdrasil.gen_channel(name: "late")
        :ok = Yggdrasil.subscribe(channel)
        :ok = Yggdrasil.publish(channel, "loaded late")
        receive do {:Y_EVENT, ^channel, m} -> show.("got", m) after 2_000 -> show.("got", nil) end
        """,
        Path.join(app, "ebin")
      )

    assert out =~ ~r/start: {:error, {:yggdrasil,/, out
    assert out =~ "reload without: {:module, Yggdrasil.Native}", out

    assert out =~
             ~r/error without: "yggdrasil: could not load the native engine from #{Regex.escape(app)}/,
           out

    assert out =~ ~r/info without: .*yggdrasil native engine not loaded/, out
    assert out =~ "reload with: {:module, Yggdrasil.Native}", out
    assert out =~ "error with: nil", out
    assert out =~ "start with: {:ok, ", out
    assert out =~ ~s(got: "loaded late"), out
  end
end
